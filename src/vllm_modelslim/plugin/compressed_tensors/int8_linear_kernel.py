"""vLLM's int8 W8A8 linear-kernel interface, computed with this project's exact int8 kernels.

compressed-tensors W8A8 (``CompressedTensorsW8A8Int8``; math from
compressed-tensors' ``QuantizationArgs``, as vLLM's CUTLASS kernel computes it)::

    dynamic (per token):  s_x[m] = max_k |x[m, k]| / 127,  x_q = round(x / s_x)
    static (per tensor):  x_q = clamp(round(x · (1/s_in)) + z_in, −128, 127)
    y[m, n] = s_x · s_w[n] · (Σ_k x_q[m, k] · W_q[n, k] − z_in · Σ_k W_q[n, k]) + bias[n]

The static case folds ``s_in`` into the per-channel scale (ModelSlim's
``deq_scale``) and ``−z_in · Σ_k W_q`` into an int32 bias, so both run the
same ``ScaledInt8MMKernel`` as ModelSlim's W8A8 / W8A8_DYNAMIC. The static
activation is multiplied by the reciprocal scale, as ModelSlim's and this
project's static quantization does (compressed-tensors divides; the two can
differ by one step only where ``x / s_in`` is within float32 rounding of a
half-integer).
"""

from __future__ import annotations

import torch
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import (
    Int8ScaledMMLinearKernel,
    Int8ScaledMMLinearLayerConfig,
)
from vllm.platforms import current_platform

from vllm_modelslim.kernels import make_scaled_int8_mm, quantize_static_per_tensor
from vllm_modelslim.plugin.compressed_tensors.kernel_choice import (
    KERNELS_ENV,
    kernel_mode,
    vllm_cpu_int8_path,
)
from vllm_modelslim.plugin.linear_method import free_checkpoint_weights
from vllm_modelslim.schemes.base import apply_2d
from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic


def per_channel_weight_scale(weight_scale: torch.Tensor, logical_widths: list[int]) -> torch.Tensor:
    """float32 ``[N]`` weight scale from per-channel ``[N, 1]`` or per-shard ``[len(widths)]`` scales.

    Raises:
        ValueError: the number of scales matches neither ``N`` nor the shard count.
    """
    scale = weight_scale.detach().float().reshape(-1)
    out_features = sum(logical_widths)
    if scale.numel() == out_features:
        return scale
    if scale.numel() == len(logical_widths):
        return torch.repeat_interleave(scale, torch.tensor(logical_widths, device=scale.device))
    raise ValueError(
        f"{scale.numel()} weight scales for {out_features} output channels in shards {logical_widths}"
    )


class ModelSlimInt8ScaledMMLinearKernel(Int8ScaledMMLinearKernel):
    """CPU int8 W8A8 for vLLM's compressed-tensors (and other int8) schemes, exact in int32.

    Chosen (``auto``) where vLLM's own CPU kernel is inexact or would fail
    (:func:`vllm_cpu_int8_path`: no VNNI/AMX int8 dot products; on AMX CPUs,
    float32 activations or static symmetric scales, which vLLM's SGL path
    cannot take); elsewhere vLLM's kernel is exact and was measured faster end
    to end (README), so it keeps the layer.

    Layer parameters read (vLLM's names): ``weight`` int8 ``[N, K]``,
    ``weight_scale`` float32 ``[N, 1]`` (channel) or ``[shards]`` (tensor),
    ``input_scale`` float32 ``[1]`` and ``input_zero_point`` int8 ``[1]``
    (static only). The checkpoint weight is freed when the chosen kernel keeps
    its own copy.
    """

    @classmethod
    def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
        if not current_platform.is_cpu():
            return False, "vllm-modelslim's int8 kernels replace vLLM's on CPU only"
        if kernel_mode() == "never":
            return False, f"{KERNELS_ENV}=never"
        return True, None

    @classmethod
    def can_implement(cls, c: Int8ScaledMMLinearLayerConfig) -> tuple[bool, str | None]:
        if not c.is_static_input_scheme and not c.input_symmetric:
            return False, "per-token activation zero points are not implemented"
        if kernel_mode() == "auto":
            # Chosen while vLLM builds the model, under the model dtype as torch's default.
            vllm_exact, why = vllm_cpu_int8_path(
                c.is_static_input_scheme, c.input_symmetric, torch.get_default_dtype()
            )
            if vllm_exact:
                return False, why
        return True, None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        w_name, w_s_name, i_s_name, i_zp_name, _ = self.layer_param_names
        weight = getattr(layer, w_name).data
        scale = per_channel_weight_scale(getattr(layer, w_s_name).data, layer.logical_widths)
        int_bias = None
        self.input_scale: float | None = None
        self.input_zero_point = 0
        if self.config.is_static_input_scheme:
            # vLLM keeps one input scale per fused layer (its shards see the same input).
            self.input_scale = float(getattr(layer, i_s_name).data.max())
            if not self.config.input_symmetric:
                self.input_zero_point = int(getattr(layer, i_zp_name).data.reshape(-1)[0])
                int_bias = -self.input_zero_point * weight.sum(dim=1, dtype=torch.int32)
            scale = scale * self.input_scale
        layer.modelslim_kernel = make_scaled_int8_mm(weight, scale, int_bias)
        free_checkpoint_weights(layer)

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        kernel = layer.modelslim_kernel
        if self.input_scale is None:
            return apply_dynamic(kernel, x, bias)
        scale, zero_point = self.input_scale, self.input_zero_point
        return apply_2d(
            x, lambda x2d: kernel(quantize_static_per_tensor(x2d, scale, zero_point), None, bias, x.dtype)
        )
