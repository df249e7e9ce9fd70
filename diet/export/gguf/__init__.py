"""The `gguf` export mode: one `model.gguf` file that llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs.

One concern a module:

    writer.py     the file: output types, refusals, the tokenizer's metadata, writing and reading back, and
                  `GGUFWriter` (the mode's `diet.export.protocol.Writer`)
    families.py   each family in llama.cpp: its architecture (or `deci` for per-layer widths), metadata, tensors
    vocab.py      SentencePiece tokenizer metadata, as llama.cpp's converter writes it
    quant.py      block quantization: the tensor types a file holds, sorted MLP channels, fitted Q8_0 scales

Opening a written file in llama.cpp (and timing it) is elsewhere: `diet/llamacpp.py` loads, `diet/measure.py` times.
"""
