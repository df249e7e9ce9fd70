"""The `vllm` export mode: a folder vLLM serves as `DeciLMForCausalLM`, with exact per-layer MLP widths.

    writer.py                 the folder (safetensors, DeciLM config.json) and `VLLMWriter` (the mode's
                              `diet.export.protocol.Writer`)
    configuration_decilm.py   the config-only remote-code file copied into every folder (never imports `diet`)
"""
