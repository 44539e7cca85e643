"""Anti-outlier RMSNorm bias: ``y = rmsnorm(x)·γ + β`` (spec §4.10, ERRATA 3).

msmodelslim's old pipeline with anti-outlier smoothing (``anti_method: m4``)
folds a shift into the norms and stores it as ``*.input_layernorm.bias``,
``*.post_attention_layernorm.bias`` (non-zero), ``q_norm.bias``, ``k_norm.bias``
and ``model.norm.bias`` (zeros). vLLM's ``RMSNorm`` has no bias and vLLM's
weight loader drops unexpected ``.bias`` tensors silently, which would serve
such a checkpoint with wrong numerics.

The plugin therefore registers :class:`ModelSlimRMSNorm` as vLLM's out-of-tree
replacement for ``RMSNorm`` (the hook vLLM Ascend uses for the same purpose).
Unless the model being built is served with a ModelSlim description that has
norm biases, the layer it builds is vLLM's own ``RMSNorm``; with them, every RMSNorm gains a
zero-initialised ``bias`` parameter (the checkpoint fills those it has) and
adds it to the normalised output (with or without a residual). A
:class:`NormBiasTracker` counts the biases loaded so that a model whose norm
layers are not ``RMSNorm`` fails loudly instead of dropping them.
"""

from __future__ import annotations

import torch
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.layernorm import RMSNorm

from vllm_modelslim.format.errors import CheckpointTensorError


class NormBiasTracker:
    """Which norm biases a checkpoint has, and how many the model loaded.

    Args:
        expected: checkpoint tensor names ending in ``norm.bias``.
        source: file to name in errors.
    """

    def __init__(self, expected: set[str], source: str):
        self.expected = expected
        self.source = source
        self.loaded = 0
        self.checked = False

    def loader(self, param: torch.nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Weight loader of the bias parameters: copy and count."""
        if param.shape != loaded_weight.shape:
            shape = tuple(loaded_weight.shape)
            raise CheckpointTensorError(
                f"a norm bias of shape {shape} does not fit a norm of size {param.shape[0]}", file=self.source
            )
        param.data.copy_(loaded_weight)
        self.loaded += 1

    def check(self) -> None:
        """Raise once all weights are loaded if some norm biases found no RMSNorm to go to."""
        if self.checked:
            return
        self.checked = True
        if self.loaded != len(self.expected):
            raise CheckpointTensorError(
                f"the checkpoint has {len(self.expected)} anti-outlier norm biases (e.g. "
                f"{sorted(self.expected)[0]!r}) but the model loaded {self.loaded}: its norm layers "
                "are not vLLM RMSNorm layers, which are the only ones that take a bias",
                file=self.source,
            )


def _active_tracker() -> NormBiasTracker | None:
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    quant_config = None if config is None else config.quant_config
    return getattr(quant_config, "norm_bias_tracker", None)


class ModelSlimRMSNorm(RMSNorm):
    """vLLM's ``RMSNorm`` with an additive bias after the scale, for checkpoints that store one.

    vLLM builds this class wherever a model asks for ``RMSNorm`` (out-of-tree
    replacement). Unless the model being built is a ModelSlim checkpoint with
    norm biases, the new layer is turned back into vLLM's own ``RMSNorm``
    before it holds anything of ours, so other models get exactly vLLM's class.
    """

    def __init__(self, hidden_size: int, *args, **kwargs):
        super().__init__(hidden_size, *args, **kwargs)
        tracker = _active_tracker()
        if tracker is None or not tracker.expected:
            self.__class__ = RMSNorm  # adds nothing over RMSNorm: exactly vLLM's layer
            return
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=self.weight.dtype), requires_grad=False)
        self.bias.weight_loader = tracker.loader

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        out = super().forward(x, residual)
        if residual is None:
            return out + self.bias
        normed, residual_out = out
        return normed + self.bias, residual_out


def register_rms_norm_bias() -> bool:
    """Make vLLM build :class:`ModelSlimRMSNorm` wherever a model asks for ``RMSNorm``.

    Returns:
        True when ours is the registered replacement (also when it already was),
        False when another plugin registered its own ``RMSNorm`` first.
    """
    current = op_registry_oot.get("RMSNorm")
    if current is None:
        CustomOp.register_oot(ModelSlimRMSNorm, name="RMSNorm")
        return True
    return current is ModelSlimRMSNorm
