"""``W4A4_FLATQUANT_DYNAMIC`` linear: Kronecker transform, clipped per-token int4, int4 × int4 GEMM.

Math (spec §4.6 with ERRATA 6; ``npu_kronecker_quant`` + ``npu_quant_matmul``)::

    x'' = Lᵀ · X · R                 X = x viewed as [l, r], l·r = K (R = I when absent)
    s_x[m] = clip · max_k |x''[m, k]| / 7,   x_q = clamp(round(x'' / s_x), −8, 7)
    y[m, n] = s_x[m] · s[n] · Σ_k x_q[m, k] · q[n, k] + bias[n]

On disk per shard: ``weight`` int8 ``[o, i]`` (int4 values, already in the
rotated basis), ``weight_scale``/``weight_offset`` ``[o, 1]``, ``left_trans``
``[l, l]``, ``right_trans`` ``[r, r]`` (absent on o_proj: identity) and
``clip_ratio`` ``[1]``. Each shard of a fused layer keeps its own transform and
clip ratio (msmodelslim 26.1 writes a different clip ratio for q_proj than for
k/v_proj; vLLM Ascend keeps the last shard loaded); shards that agree share one
quantization.
"""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import CheckpointTensorError, InvalidScaleError
from vllm_modelslim.kernels import kronecker_transform, make_scaled_int8_mm, quantize_dynamic_per_token
from vllm_modelslim.schemes.base import LinearScheme, apply_2d, shard_groups
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    CLIP_RATIO,
    INT4_IN_INT8_WEIGHT,
    LEFT_TRANS,
    RIGHT_TRANS,
    WEIGHT_OFFSET,
    WEIGHT_SCALE,
)
from vllm_modelslim.schemes.linear.symmetric import require_int4_values, require_zero_weight_offset
from vllm_modelslim.schemes.registry import register_scheme

ACTIVATION_BITS = 4


@register_scheme("W4A4_FLATQUANT_DYNAMIC", "linear")
class W4A4FlatQuantLinearScheme(LinearScheme):
    """FlatQuant int4 × int4 linear layer."""

    quant_type = "W4A4_FLATQUANT_DYNAMIC"

    def checkpoint_tensors(self):
        return (INT4_IN_INT8_WEIGHT, WEIGHT_SCALE, WEIGHT_OFFSET, LEFT_TRANS, RIGHT_TRANS, CLIP_RATIO)

    def _transforms(self, layer: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None, float]]:
        """``(L, R or None, clip)`` per shard, after checking sizes and values."""
        in_features = layer.weight.shape[1]
        left = self.check_finite(layer, "left_trans")
        right = self.check_finite(layer, "right_trans") if hasattr(layer, "right_trans") else None
        clip = self.check_scale(layer, "clip_ratio").tolist()
        transforms = []
        for shard in range(len(layer.logical_widths)):
            l_mat, r_mat = left[shard], None if right is None else right[shard]
            r_size = r_mat.shape[0] if r_mat is not None else in_features // l_mat.shape[0]
            square = l_mat.shape[0] == l_mat.shape[1] and (r_mat is None or r_mat.shape[0] == r_mat.shape[1])
            if not square or l_mat.shape[0] * r_size != in_features:
                sizes = f"{tuple(l_mat.shape)} and {None if r_mat is None else tuple(r_mat.shape)}"
                raise CheckpointTensorError(
                    f"FlatQuant transforms {sizes} of shard {self.context.shard_prefixes[shard]!r} must be "
                    f"square with sizes multiplying to K = {in_features}",
                    file=self.error_file("left_trans"),
                    layer=self.context.prefix,
                )
            transforms.append((l_mat, r_mat, clip[shard]))
        return transforms

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = require_int4_values(self, layer.weight.data)
        scale = self.check_scale(layer, "weight_scale").reshape(-1)
        require_zero_weight_offset(self, layer)
        kernels = torch.nn.ModuleList()
        transforms = []
        for start, stop, (left, right, clip) in shard_groups(layer.logical_widths, self._transforms(layer)):
            if not 0 < clip <= 1:
                raise InvalidScaleError(
                    f"clip_ratio {clip} outside (0, 1]",
                    file=self.error_file("clip_ratio"),
                    layer=self.context.prefix,
                )
            kernels.append(make_scaled_int8_mm(weight[start:stop], scale[start:stop]))
            transforms.append((left, right, clip))
        layer.modelslim_kernels = kernels
        layer.modelslim_transforms = transforms

    def apply(self, layer, x, bias):
        pairs = list(zip(layer.modelslim_kernels, layer.modelslim_transforms, strict=True))

        def forward(x2d: torch.Tensor) -> torch.Tensor:
            outputs = []
            for kernel, (left, right, clip) in pairs:
                x_q, x_scale = quantize_dynamic_per_token(
                    kronecker_transform(x2d, left, right), bits=ACTIVATION_BITS, clip_ratio=clip
                )
                outputs.append(kernel(x_q, x_scale, None, torch.float32))
            y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            return (y if bias is None else y + bias.to(torch.float32)).to(x.dtype)

        return apply_2d(x, forward)
