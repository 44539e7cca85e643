"""CPU weight-only int8 kernel: ``aten._weight_int8pack_mm`` for few rows, a block GEMM for many.

``_weight_int8pack_mm(x, w_q, ones)`` returns ``x·w_qᵀ`` rounded to the
activation dtype; the per-channel scale, the zero-point correction
``− z[n]·Σ_k x[m, k]`` and the bias are applied afterwards in float32, so the
scales keep full precision (passing them to the op would round them to bf16).
The op reads out of bounds (and crashes or returns garbage) unless K is a
multiple of 16 on the CPU build we use, so K is zero-padded to that at load.
Measured with K = N = 4096 on 2 cores: 0.75 ms at M = 1 against 2.3 ms for a
bf16 ``matmul`` (``benchmarks/kernels.py``); with fp32 activations the op is
several times slower than a float ``matmul``, hence bf16/fp16 only.

The op's cost grows fast with M (130 ms at M = 256 against 43 ms for a float32
``matmul``, measured without native bf16), so from :data:`MANY_ROWS_FROM` rows
on (:data:`BF16_MANY_ROWS_FROM` on the bf16 route) the kernel converts the
int8 weight (exact in bf16 and float32) one block of output channels at a time
into a shared scratch buffer and runs a GEMM
(:mod:`~vllm_modelslim.kernels.float_gemm`): in bf16 on CPUs with native bf16
(AVX512-BF16, AMX) for bf16 activations — ``x·w_qᵀ`` rounded to bf16, the op's
own rounding — else in float32; the same float32 epilogue either way, no float
copy of the weight kept between calls. Measured on a 2-core AMD EPYC with
AVX512-BF16 (one thread, K = 2048, N = 6144, M = 512): 0.41× vLLM's prepacked
oneDNN bf16 GEMM over float32 blocks, 0.85× over bf16 blocks
(``benchmarks/kernels.py``); on AMX CPUs the bf16 route is the one taken, its
speed there unmeasured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.float_gemm import gemm_by_blocks, many_rows_gemm_dtype
from vllm_modelslim.kernels.row_dispatch import MANY_ROWS_FROM, RowDispatchMixin
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

_K_MULTIPLE = 16
BF16_MANY_ROWS_FROM = 16
"""Smallest M of the many-rows path when its GEMM runs in bf16: the measured crossover with the op
(AVX512-BF16, one thread, K = 2048, N = 6144: op 3.2 / 6.2 ms, bf16 blocks 4.0 / 5.1 ms at M = 8 / 16)."""


class Int8PackWeightOnlyInt8(RowDispatchMixin, WeightOnlyKernel):
    """``aten._weight_int8pack_mm`` (few rows) / bf16 or float32 block GEMM (many rows), CPU, bf16/fp16 x.

    Per-channel scales only; it keeps them, and the zero points, as ``[N]`` vectors.
    """

    name = "cpu_int8pack"
    device_types = frozenset({"cpu"})
    many_rows_from = MANY_ROWS_FROM

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cpu":
            return False, "aten._weight_int8pack_mm is used on CPU only"
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return False, "this torch build lacks aten._weight_int8pack_mm"
        return True, None

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if not config.per_channel:
            return False, "per-group scales are not supported"
        if config.act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"slow for {config.act_dtype} activations"
        return True, None

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        self.weight_scale = self.weight_scale.reshape(-1)  # [N, 1] -> [N]
        if self.zero_point is not None:
            self.zero_point = self.zero_point.reshape(-1)
        self.k_pad = (-weight.shape[1]) % _K_MULTIPLE
        if self.k_pad:
            self.weight = F.pad(self.weight, (0, self.k_pad)).contiguous()
            self.copies_weight = True  # the padded copy replaces the checkpoint's
        self.register_buffer(
            "unit_scale", torch.ones(weight.shape[0], dtype=config.act_dtype), persistent=False
        )
        self.many_rows_dtype = many_rows_gemm_dtype(config.act_dtype)
        if self.many_rows_dtype == torch.bfloat16:
            self.many_rows_from = BF16_MANY_ROWS_FROM
        self.register_row_dispatch()

    def forward_few_rows(self, x, bias):  # noqa: D102
        x_padded = F.pad(x, (0, self.k_pad)) if self.k_pad else x
        acc = torch.ops.aten._weight_int8pack_mm(x_padded.contiguous(), self.weight, self.unit_scale)
        return self._epilogue(acc, x, bias, slice(None))

    def weight_t_block(self, cols: slice, scratch: torch.Tensor) -> torch.Tensor:
        """``w_qᵀ[:, cols]`` ``[K, len(cols)]`` in ``scratch``'s dtype (exact: int8 values), for the GEMM."""
        k = self.config.in_features
        block = scratch.view(cols.stop - cols.start, k)
        return block.copy_(self.weight[cols, :k]).T

    def forward_many_rows(self, x, bias):  # noqa: D102
        def epilogue(acc: torch.Tensor, cols: slice) -> torch.Tensor:
            return self._epilogue(acc, x, bias, cols, row_sums, out_dtype=torch.float32)

        row_sums = None if self.zero_point is None else x.to(torch.float32).sum(dim=-1, keepdim=True)
        return gemm_by_blocks(
            x, self.weight_t_block, self.config.out_features, self.many_rows_dtype, epilogue=epilogue
        )

    def _epilogue(
        self,
        acc: torch.Tensor,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        cols: slice,
        row_sums: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``(acc − z·Σx)·s + b`` in float32 for output channels ``cols``, as ``out_dtype`` (``x.dtype``).

        ``acc`` is ``x·w_qᵀ`` ``[M, len(cols)]`` (bf16 or float32); ``row_sums``
        is ``Σ_k x[m, k]`` ``[M, 1]`` in float32 (computed here when None).
        """
        y = acc.to(torch.float32)  # a new tensor, or the fresh float32 accumulator itself
        if self.zero_point is not None:
            if row_sums is None:
                row_sums = x.to(torch.float32).sum(dim=-1, keepdim=True)
            y = y.sub_(row_sums * self.zero_point[cols])
        y = y.mul_(self.weight_scale[cols])
        if bias is not None:
            y = y.add_(bias[cols].to(torch.float32))
        return y.to(out_dtype or x.dtype)
