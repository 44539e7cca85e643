"""Pick a kernel's path by the number of activation rows M, at run time, also under torch.compile.

The best CPU path for a few rows (decode: a fused int8/int4 weight-only op
that reads the weight bytes once) is not the best for many rows (prefill: a
float32 GEMM over the weight dequantized once per call; see
``benchmarks/kernels.py``). A Python ``if M >= threshold`` is fine in eager
mode, but vLLM compiles the model once for a symbolic M and, by default,
drops the shape guards (``dynamic_shapes_config.evaluate_guards``), so a
branch taken while tracing would be kept for every M. Kernels that branch on
M therefore run, when traced, as one opaque custom op
(``torch.ops.vllm_modelslim.rows_dispatch``) that finds the kernel by a
handle and branches in eager code. Plain torch: no vLLM import.
"""

from __future__ import annotations

import itertools
import weakref

import torch

MANY_ROWS_FROM = 32
"""Default smallest M of the many-rows path: the measured crossover of the CPU weight-only
kernels (int8pack/int4pack op against the float32 block GEMM, K = N = 4096, ``benchmarks/kernels.py``)."""

_KERNELS: dict[int, weakref.ReferenceType] = {}
_HANDLES = itertools.count()


@torch.library.custom_op("vllm_modelslim::rows_dispatch", mutates_args=())
def _rows_dispatch(
    x: torch.Tensor, bias: torch.Tensor | None, handle: int, out_features: int
) -> torch.Tensor:
    kernel = _KERNELS[handle]()
    if kernel is None:
        raise RuntimeError(f"rows_dispatch: kernel {handle} no longer exists")
    return kernel.forward_eager(x, bias)


@_rows_dispatch.register_fake
def _(x: torch.Tensor, bias: torch.Tensor | None, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], out_features))


class RowDispatchMixin:
    """Mixin for a kernel module with a few-rows and a many-rows path.

    The subclass sets ``many_rows_from`` (the smallest M that takes the
    many-rows path; 0 disables it) and implements ``forward_few_rows(x, bias)``
    and ``forward_many_rows(x, bias)`` (``x`` ``[M, K]``, output ``[M, N]`` in
    ``x.dtype``, N = ``config.out_features``); it calls
    :meth:`register_row_dispatch` once its buffers exist.
    """

    many_rows_from: int = 0

    def register_row_dispatch(self) -> None:
        """Give this kernel a handle for the traced custom op (kept as a weak reference)."""
        self.dispatch_handle = next(_HANDLES)
        _KERNELS[self.dispatch_handle] = weakref.ref(self)

    def forward_eager(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Branch on ``x.shape[0]`` in Python (eager code only)."""
        if self.many_rows_from and x.shape[0] >= self.many_rows_from:
            return self.forward_many_rows(x, bias)
        return self.forward_few_rows(x, bias)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        if self.many_rows_from and torch.compiler.is_compiling():
            return torch.ops.vllm_modelslim.rows_dispatch(
                x, bias, self.dispatch_handle, self.config.out_features
            )
        return self.forward_eager(x, bias)

    def forward_few_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward_many_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError
