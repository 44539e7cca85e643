"""The demo pipeline: build the tiny Qwen3 model, quantize it with msmodelslim, run it in vLLM."""
