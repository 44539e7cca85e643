"""Exact int8 GEMM through ``torch._int_mm`` (int32 accumulators), fp32 epilogue.

Measured on a 2-core Xeon with AVX512-VNNI, K = N = 4096 (see
``benchmarks/kernels.py``), ``_int_mm(x_q, w_q.T)`` beats bf16 ``matmul`` at
every M and is exact. ``w_q`` stays ``[N, K]`` row-major: passing the ``.T``
view was faster than a stored ``[K, N]`` copy (M = 1: 0.54 ms against 5.1 ms).
Per-group weight scales (legacy W4A8) run one ``_int_mm`` per K-group,
each scaled and summed in float32. The alternative of feeding the int8 activations, exact in bf16, to
``aten._weight_int8pack_mm`` is not exact: with bf16 activations the op
returns the accumulator rounded to bf16 (errors of thousands of units on
K = 4096), and with fp32 activations it is exact but 22× slower than
``_int_mm`` at M = 1 (11.9 ms). ``_int_mm`` returns wrong
results for K = 1 on CPU and needs M > 16 and K, N multiples of 8 on CUDA; the
kernel pads M there and refuses the other cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.scaled_int8_mm.base import ScaledInt8MMConfig, ScaledInt8MMKernel

_CUDA_MIN_ROWS = 17


class TorchIntMMScaledInt8MM(ScaledInt8MMKernel):
    """``torch._int_mm`` kernel for CPU and CUDA."""

    name = "torch_int_mm"

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type not in ("cpu", "cuda"):
            return False, f"torch._int_mm has no {device_type} kernel"
        return True, None

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if config.in_features < 2:
            return False, "torch._int_mm is wrong for K = 1"
        if config.device_type == "cuda" and (config.in_features % 8 or config.out_features % 8):
            return False, "torch._int_mm on CUDA needs K and N multiples of 8"
        if config.group_size and config.group_size < 2:
            return False, "torch._int_mm is wrong for K-groups of 1"
        return True, None

    def __init__(self, config, weight, weight_scale, int_bias=None):
        super().__init__(config, weight, weight_scale, int_bias)
        if config.group_size:
            # [G, N, g] so that each group's weight is one contiguous [N, g] block.
            self.weight = self.weight.unflatten(1, (-1, config.group_size)).transpose(0, 1).contiguous()

    def _int_mm(self, x_q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = x_q.shape[0]
        if x_q.is_cuda and rows < _CUDA_MIN_ROWS:
            x_q = F.pad(x_q, (0, 0, 0, _CUDA_MIN_ROWS - rows))
        return torch._int_mm(x_q, weight.T)[:rows]

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        if not self.config.group_size:
            return self.epilogue(self._int_mm(x_q, self.weight), x_scale, bias, out_dtype)
        group = self.config.group_size
        scaled = None
        for j in range(self.weight.shape[0]):
            acc = self._int_mm(x_q[:, j * group : (j + 1) * group].contiguous(), self.weight[j])
            term = acc.to(torch.float32) * self.weight_scale[:, j]
            scaled = term if scaled is None else scaled + term
        return self.group_epilogue(scaled, x_scale, bias, out_dtype)
