"""``W8A8`` (static) linear: per-tensor asymmetric int8 activations × per-channel int8 weights.

Math (spec §4.1, ERRATA 2; vLLM Ascend ``AscendW8A8LinearMethod`` with ``npu_quant_matmul``)::

    x_q = clamp(round(x · (1/input_scale) + input_offset), −128, 127)
    y[m, n] = (Σ_k x_q[m, k] · W_q[n, k] + quant_bias[n]) · deq_scale[n]

with ``deq_scale = input_scale · weight_scale`` and ``quant_bias =
round(bias/deq_scale) − input_offset · Σ_k W_q[n, k]``: the float bias is
already folded into ``quant_bias``, so the layer's ``bias`` is not added again.
Under tensor parallelism a row-parallel layer adds ``quant_bias`` on rank 0
only (:func:`rank_quant_bias`; the all-reduce sums the partial products).

On disk per shard (msmodelslim 26.1 new pipeline): ``weight`` int8 [o, i],
``quant_bias`` int32 [o], ``input_scale`` [1], ``input_offset`` [1],
``deq_scale`` [o] (f32, or int64 holding f32 bits for fp16/fp32 models); old
pipeline and W8A8_MIX checkpoints add ``weight_scale``/``weight_offset`` [o, 1].
Fused shards (q/k/v, gate/up) see the same input; if their activation scales
or offsets differ, each group of rows is quantized with its own.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels import make_scaled_int8_mm
from vllm_modelslim.kernels.activation_quantizers import make_activation_quant
from vllm_modelslim.schemes.base import LinearScheme, apply_2d, shard_groups
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    DEQ_SCALE,
    INPUT_OFFSET,
    INPUT_SCALE,
    INT8_WEIGHT,
    OPTIONAL_WEIGHT_SCALE,
    QUANT_BIAS,
    SYMMETRIC_WEIGHT_OFFSET,
)
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W8A8", "linear")
class W8A8StaticLinearScheme(LinearScheme):
    """Static (calibrated) per-tensor W8A8 linear layer."""

    quant_type = "W8A8"

    def checkpoint_tensors(self):
        return (
            INT8_WEIGHT,
            QUANT_BIAS,
            INPUT_SCALE,
            INPUT_OFFSET,
            DEQ_SCALE,
            OPTIONAL_WEIGHT_SCALE,
            SYMMETRIC_WEIGHT_OFFSET,
        )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        deq_scale = self.float_param(layer, "deq_scale").reshape(-1)
        input_scale = self.float_param(layer, "input_scale").reshape(-1)
        input_offset = self.float_param(layer, "input_offset").reshape(-1)
        quant_bias = rank_quant_bias(
            layer.quant_bias.data, self.context.row_parallel, getattr(layer, "tp_rank", 0)
        )
        weight = layer.weight.data

        kernels = torch.nn.ModuleList()
        quantizers = torch.nn.ModuleList()
        keys = list(zip(input_scale.tolist(), input_offset.tolist(), strict=True))
        for start, stop, (scale, offset) in shard_groups(layer.logical_widths, keys):
            kernels.append(
                make_scaled_int8_mm(
                    weight[start:stop],
                    deq_scale[start:stop],
                    None if quant_bias is None else quant_bias[start:stop],
                    label=self.quant_type,
                    out_dtype=layer.modelslim_params_dtype,
                )
            )
            # Device tensors made once here: the forward copies nothing from the host (CUDA graphs).
            quantizers.append(
                make_activation_quant(
                    weight.device,
                    scale=torch.tensor([scale], dtype=torch.float32),
                    offset=torch.tensor([offset], dtype=torch.float32),
                    label=self.quant_type,
                )
            )
        layer.modelslim_kernels = kernels
        layer.modelslim_act_quants = quantizers

    def apply(self, layer, x, bias):
        # ``bias`` is folded into quant_bias by msmodelslim (ERRATA 2).
        pairs = list(zip(layer.modelslim_kernels, layer.modelslim_act_quants, strict=True))

        def forward(x2d: torch.Tensor) -> torch.Tensor:
            outputs = [kernel(quantizer(x2d)[0], None, None, x.dtype) for kernel, quantizer in pairs]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

        return apply_2d(x, forward)


def rank_quant_bias(quant_bias: torch.Tensor, row_parallel: bool, tp_rank: int) -> torch.Tensor | None:
    """The share of the int32 ``quant_bias`` ``[N]`` that tensor-parallel rank ``tp_rank`` adds.

    A column-parallel layer's rank holds whole output columns (vLLM already
    sliced ``quant_bias`` to them) and adds its slice. A row-parallel layer
    (o_proj, down_proj, the experts' w2) splits K: rank ``r`` computes
    ``y_r = (Σ_{k∈K_r} x_q[k]·W_q[n,k] + b_r[n])·deq_scale[n]`` and vLLM sums
    the ``y_r``, which equals the unsplit ``y`` exactly when ``Σ_r b_r =
    quant_bias``. ``quant_bias = round(bias/deq_scale) − input_offset·Σ_k W_q[n,k]``
    folds the offset over the FULL K, and that is what the sum needs: each rank's
    ``x_q`` still carries ``+input_offset`` on its own K-slice, so the slices'
    offset terms add up to the full-K sum the bias cancels. Rank 0 therefore
    takes the whole bias and the others none (integer-exact; an equal split
    would need every entry divisible by the rank count).

    Args:
        quant_bias: int32 ``[N]``, as loaded (not sliced for a row-parallel layer).
        row_parallel: the layer splits its input features over the ranks.
        tp_rank: this rank among those whose outputs are summed (0 without
            tensor parallelism, and for experts under expert parallelism).

    Returns:
        ``quant_bias`` itself, or None where this rank adds no bias.
    """
    return None if row_parallel and tp_rank > 0 else quant_bias
