"""vLLM's compiled CUDA ops as seen by this project's kernels (lookup, availability, version shims)."""

from vllm_modelslim.kernels.vllm_cuda.ops import (
    LIBRARY_ENV,
    cuda_capability,
    vllm_cuda_op,
    vllm_cuda_unavailable_reason,
)

__all__ = ["LIBRARY_ENV", "cuda_capability", "vllm_cuda_op", "vllm_cuda_unavailable_reason"]
