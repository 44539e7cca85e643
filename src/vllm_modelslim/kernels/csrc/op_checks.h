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

// A packed weight of 64-byte blocks, uint8 [N/16, K/k_per_block, 64], of k_size inputs; the message
// reads "<name> must be <what> of K = <k_size> inputs".
inline void check_packed_weight(const at::Tensor& weight, int64_t k_size, int64_t k_per_block, const char* what,
                                const char* name = "weight") {
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.size(1) * k_per_block == k_size && weight.size(2) == 64,
              name, " must be ", what, " of K = ", k_size, " inputs");
}

}  // namespace vllm_modelslim
