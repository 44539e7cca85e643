// Shared argument checks of the project's CPU ops: one message per kind of tensor, raised before any compute.
#pragma once

#include <ATen/ATen.h>

namespace vllm_modelslim {

// x: a contiguous bf16 or float32 [M, K] tensor with K a multiple of 16.
inline void check_activation_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [M, K] tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bf16 or float32");
  TORCH_CHECK(x.size(1) % 16 == 0, "K must be a multiple of 16");
}

// A per-channel vector (scale, zero point, bias): contiguous float32 with n elements, when present.
inline void check_channel_vector(const c10::optional<at::Tensor>& t, int64_t n, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n, name,
              " must be a contiguous float32 [N] tensor");
}

}  // namespace vllm_modelslim
