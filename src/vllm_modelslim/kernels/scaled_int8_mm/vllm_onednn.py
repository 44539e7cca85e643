"""vLLM-CPU's prepacked oneDNN int8 GEMM (its compressed-tensors W8A8 kernel), on CPUs with int8 dot products.

``vllm._custom_ops.create_onednn_scaled_mm`` reorders the int8 weight once
into oneDNN's blocked layout (a copy held by the handler) and
``onednn_scaled_mm`` computes ``s_x[m] · s_w[n] · Σ_k x_q[m, k] · w_q[n, k]``
with int32 accumulators and a float32 epilogue. On CPUs with VNNI/AMX
(:func:`~vllm_modelslim.kernels.platform.cpu_has_int8_dot`) the accumulation
is exact; without them oneDNN takes 16-bit saturating paths and is inexact, so
the kernel refuses those CPUs. It gives the handler unit scales, so it returns
the accumulator converted to float32, and applies the scales in the shared
epilogue: the results are bit-identical to ``torch._int_mm``'s. (With oneDNN's
own scaling order, float32 rounding differences flipped enough activation
roundings downstream to lower MiniLM's fp32 W8A8 embeddings to cosine 0.99867
against the reference, below the test's 0.9995.) It is faster than ``torch._int_mm``
at every M measured on 2 cores with AVX512-VNNI (K = N = 4096, oneDNN scaling
itself: 0.60 against 0.78 ms at M = 1, 1.2 against 3.4 ms at M = 8, 23
against 45 ms at M = 512; ``benchmarks/kernels.py``). Per-channel weight
scales only.

The handler has no int32 output and no integer bias, so the int32 bias of
static W8A8 (``quant_bias``) could only be added after scaling, as
``b_int · s_w``; where it nearly cancels the accumulator that loses digits
(relative errors of 1e-5 measured at K = 1000), so this kernel refuses layers
with an int32 bias: :mod:`.vllm_onednn_static` runs them through the same
library's static handler with an activation zero point.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.platform import cpu_has_int8_dot
from vllm_modelslim.kernels.scaled_int8_mm.base import ScaledInt8MMConfig, ScaledInt8MMKernel

_PRIMITIVE_CACHE_SIZE = 32


def vllm_cpu_ops():
    """VLLM's ``_custom_ops`` when vLLM is installed with its oneDNN CPU kernels, else None."""
    try:
        from vllm import _custom_ops as ops
    except ImportError:
        return None
    return ops if getattr(ops, "_supports_onednn", False) else None


class VllmOnednnScaledInt8MM(ScaledInt8MMKernel):
    """vLLM-CPU's ``onednn_scaled_mm`` kernel (CPU with VNNI/AMX, per-channel scales).

    The handler owns a prepacked copy of the weight, so the kernel drops its
    own int8 buffer (``copies_weight``: the layer's checkpoint tensor can be
    freed too) and reports the copy's size as ``external_weight_bytes``.
    """

    name = "vllm_onednn"
    device_types = frozenset({"cpu"})
    copies_weight = True

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cpu":
            return False, "vLLM's oneDNN int8 GEMM is a CPU kernel"
        if not cpu_has_int8_dot():
            return False, "without VNNI/AMX int8 dot products oneDNN's int8 GEMM is inexact"
        if vllm_cpu_ops() is None:
            return False, "vLLM with oneDNN CPU kernels is not installed"
        return True, None

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if config.group_size:
            return False, "per-group weight scales are not supported"
        if config.has_int_bias:
            return False, "no exact int32 bias: it would be added after scaling"
        return True, None

    def __init__(self, config, weight, weight_scale, int_bias=None):
        super().__init__(config, weight, weight_scale, int_bias)
        ops = vllm_cpu_ops()
        self._ops = ops
        # Unit scales: the handler returns the int32 accumulator converted to float32, and the
        # shared epilogue scales it in the same order as every other kernel (bit-identical results).
        # The handler reads the scales from this tensor's memory at run time: keep it alive.
        self.register_buffer(
            "unit_scale", torch.ones(config.out_features, 1, dtype=torch.float32), persistent=False
        )
        self._handler = ops.create_onednn_scaled_mm(
            self.weight.t(), self.unit_scale, torch.float32, True, False, _PRIMITIVE_CACHE_SIZE
        )
        self.external_weight_bytes = self.weight.numel()
        self.weight = None

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        rows = x_q.shape[0]
        acc = torch.empty(rows, self.config.out_features, dtype=torch.float32)
        unit = torch.ones(rows, 1, dtype=torch.float32)
        self._ops.onednn_scaled_mm(self._handler, x_q.contiguous(), acc, unit, None, None, None)
        return self.epilogue(acc, x_scale, bias, out_dtype)
