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

from collections.abc import Sequence

import torch

from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.kernels import kronecker_transform, make_scaled_int8_mm, quantize_dynamic_per_token
from vllm_modelslim.schemes.base import LinearScheme, apply_2d, shard_groups
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    CLIP_RATIO,
    INT4_IN_INT8_WEIGHT,
    LEFT_TRANS,
    RIGHT_TRANS,
    SYMMETRIC_WEIGHT_OFFSET,
    WEIGHT_SCALE,
)
from vllm_modelslim.schemes.linear.symmetric import require_int4_values
from vllm_modelslim.schemes.registry import register_scheme

ACTIVATION_BITS = 4


@register_scheme("W4A4_FLATQUANT_DYNAMIC", "linear")
class W4A4FlatQuantLinearScheme(LinearScheme):
    """FlatQuant int4 × int4 linear layer."""

    quant_type = "W4A4_FLATQUANT_DYNAMIC"
    row_parallel_split_error = (
        "FlatQuant's Kronecker transform mixes all K input features, and a row-parallel layer "
        "holds only a K-slice on each rank; run FlatQuant checkpoints without tensor parallelism"
    )

    def checkpoint_tensors(self):
        return (
            INT4_IN_INT8_WEIGHT,
            WEIGHT_SCALE,
            SYMMETRIC_WEIGHT_OFFSET,
            LEFT_TRANS,
            RIGHT_TRANS,
            CLIP_RATIO,
        )

    def _transforms(self, layer: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None, float]]:
        """``(L, R or None, clip)`` per shard, after checking sizes and values."""
        in_features = layer.weight.shape[1]
        left = self.float_param(layer, "left_trans")
        right = self.float_param(layer, "right_trans") if hasattr(layer, "right_trans") else None
        clip = self.float_param(layer, "clip_ratio").tolist()
        transforms = []
        for shard in range(len(layer.logical_widths)):
            l_mat, r_mat = left[shard], None if right is None else right[shard]
            r_shape = None if r_mat is None else r_mat.shape
            self._check_transform_sizes(shard, l_mat.shape, r_shape, in_features)
            transforms.append((l_mat, r_mat, clip[shard]))
        return transforms

    def check_stored_shapes(self, in_features: int | None) -> None:
        """Check each shard's stored ``left_trans``/``right_trans`` sizes against K (headers only)."""
        checkpoint = self.context.checkpoint
        if checkpoint is None or in_features is None:
            return
        for shard, prefix in enumerate(self.context.shard_prefixes):
            left = checkpoint.get(f"{prefix}.left_trans")
            right = checkpoint.get(f"{prefix}.right_trans")
            if left is not None:
                r_shape = None if right is None else right.shape
                self._check_transform_sizes(shard, left.shape, r_shape, in_features)

    def _check_transform_sizes(
        self, shard: int, left: Sequence[int], right: Sequence[int] | None, in_features: int
    ) -> None:
        """Raise unless ``L`` (and ``R``) are square with ``l · r = K`` (``r = K / l`` without ``R``)."""
        r_size = right[0] if right is not None else in_features // left[0]
        square = left[0] == left[1] and (right is None or right[0] == right[1])
        if not square or left[0] * r_size != in_features:
            sizes = f"{tuple(left)} and {None if right is None else tuple(right)}"
            raise CheckpointTensorError(
                f"FlatQuant transforms {sizes} of shard {self.context.shard_prefixes[shard]!r} must be "
                f"square with sizes multiplying to K = {in_features}",
                file=self.error_file("left_trans"),
                layer=self.context.prefix,
            )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = require_int4_values(self, layer.weight.data)
        scale = self.float_param(layer, "weight_scale").reshape(-1)
        kernels = torch.nn.ModuleList()
        transforms = []
        for start, stop, (left, right, clip) in shard_groups(layer.logical_widths, self._transforms(layer)):
            kernels.append(make_scaled_int8_mm(weight[start:stop], scale[start:stop], label=self.quant_type))
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
