"""The vLLM wing: the only package of vllm-modelslim that imports vLLM.

* ``quant_config``: ``AscendModelSlimConfig``, registered as ``ascend``/``modelslim``;
* ``linear_method``, ``moe_method``, ``kv_cache_method``: vLLM quant-method
  adapters around the schemes; ``parameters``: vLLM parameters built from the
  schemes' tensor declarations;
* ``norm_bias``: the bias-capable ``RMSNorm``; ``int8_kv_attention``: the int8
  KV cache on vLLM's attention backends;
* ``compressed_tensors``: LLM-Compressor checkpoints on CPU (kernel adapters,
  the MoE config);
* ``compatibility``: the supported vLLM range; ``registration``: what
  ``vllm_modelslim.register()`` does when the range is met.

Everything below (``format``, ``schemes``, ``kernels``, ``reference``,
``inspection``) imports without vLLM.
"""
