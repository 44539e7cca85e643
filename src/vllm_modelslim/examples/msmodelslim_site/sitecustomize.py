"""On msmodelslim's ``PYTHONPATH`` for DeepSeek-V3 / Kimi-K2 / GLM-4.5 (run by the tool's own interpreter).

msmodelslim's DeepSeek-V3 and Kimi-K2 adapters build each decoder layer and
fill it with a strict ``load_state_dict`` of the tensors named by
``named_parameters()``. DeepSeek's own modeling code declares the router's
``e_score_correction_bias`` as a parameter; transformers 4.57's
``DeepseekV3TopkRouter`` registers it as a buffer, so the strict load stops
with "Missing key(s) in state_dict: mlp.gate.e_score_correction_bias". This
file makes the bias a (frozen) parameter after the router's ``__init__``,
the layout of DeepSeek's code; the math is unchanged.

The adapters also feed each decoder layer's ``outputs[0]`` to the next layer,
written for transformers 4.48, whose decoder layers return a tuple; 4.57's
``DeepseekV3DecoderLayer`` returns the tensor itself, so ``outputs[0]`` drops
the batch dimension and the next layer fails ("not enough values to unpack")
whenever a recipe needs calibration forwards (static activation scales).
The layer's output is therefore wrapped in a one-element tuple, as in 4.48.
Layers the adapters build themselves (every layer after the first) get a
config without an attention implementation (``KeyError: None`` in the
attention); they get "eager", the one the adapters ask ``from_pretrained`` for.
The adapters never run the whole model's forward past layer 0 (they stop at
its input), so nothing else sees the tuple. Both changes patch transformers
inside the tool's process only, never msmodelslim.
"""

import importlib.abc
import sys

_MODULE = "transformers.models.deepseek_v3.modeling_deepseek_v3"
# GLM-4.5 (glm4_moe adapter): its layers beyond the first are filled non-strictly from
# named_parameters() and the saver writes parameters only, so with the buffer the bias would be
# zero during calibration and missing from the output.
_ROUTERS = {
    _MODULE: "DeepseekV3TopkRouter",
    "transformers.models.glm4_moe.modeling_glm4_moe": "Glm4MoeTopkRouter",
}


def _patch(module) -> None:
    import torch

    router = getattr(module, _ROUTERS[module.__name__])
    original_init = router.__init__

    def __init__(self, config, *args, **kwargs):
        original_init(self, config, *args, **kwargs)
        bias = self._buffers.pop("e_score_correction_bias", None)
        if bias is not None:
            self.e_score_correction_bias = torch.nn.Parameter(bias.float(), requires_grad=False)

    router.__init__ = __init__

    layer = module.DeepseekV3DecoderLayer
    original_forward = layer.forward

    def forward(self, *args, **kwargs):
        config = self.self_attn.config
        if config._attn_implementation is None:  # layers the adapter builds from its own config
            config._attn_implementation = "eager"
        output = original_forward(self, *args, **kwargs)
        return (output,) if isinstance(output, torch.Tensor) else output

    layer.forward = forward


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the DeepSeek-V3 modeling module right after it is imported."""

    def find_spec(self, name, path, target=None):
        if name not in _ROUTERS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


import importlib.util  # noqa: E402

sys.meta_path.insert(0, _Finder())
