// Weight-only int8 (W8A16) for many rows on x86 AVX-512 BF16: bf16 activations × int8 weights.
//
// y[m, n] = (Σ_k x[m, k]·q[n, k] − z[n]·Σ_k x[m, k])·s[n] + b[n]   (ModelSlim W8A16, zero point subtracted)
//
// int8_weight_bf16_gemm: q is exact in bf16 (|q| ≤ 128 has at most 8 significant bits), so each
// 64-channel × 512-k panel of q is written as bf16 pairs in cache and multiplied by the bf16 panel
// GEMM (bf16_panel_gemm.h): products exact in float32, float32 sums; the zero point, scale and bias
// are applied per channel in float32 and the output is rounded once to bf16. Σ_k x is summed in
// float32.
//
// Weight layout: the W8A16 VNNI layout of int8_weight_vnni_linear.cpp, uint8 [N/16, K/4, 16, 4];
// byte (tile, kq, j, t) holds u = q + 128 of channel 16·tile + j at k = 4·kq + t.

#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "avx512_vectors.h"
#include "bf16_panel_gemm.h"
#include "op_checks.h"

namespace {

constexpr int64_t kTileN = 16;   // output channels per 64-byte weight block
constexpr int64_t kBlockK = 4;   // k per 64-byte weight block
constexpr int64_t kBlockBytes = 64;

// Σ_k x[m, k] in float32, 16 lanes then one reduction per row.
std::vector<float> row_sums(const at::BFloat16* x, int64_t m_size, int64_t k_size) {
  std::vector<float> sums(m_size);
  for (int64_t m = 0; m < m_size; ++m) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_size; k += 16) acc = _mm512_add_ps(acc, vllm_modelslim::load16(x + m * k_size + k));
    sums[m] = _mm512_reduce_add_ps(acc);
  }
  return sums;
}

}  // namespace

// x bf16 [M, K] contiguous (K % 16 == 0); weight uint8 [N/16, K/4, 64]; scale float32 [N]; zero_point
// and bias float32 [N] or None. Returns bf16 [M, N].
at::Tensor int8_weight_bf16_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                 const c10::optional<at::Tensor>& zero_point, const c10::optional<at::Tensor>& bias) {
  vllm_modelslim::check_activation_rows(x);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "x must be bf16");
  const int64_t m_size = x.size(0), k_size = x.size(1);
  vllm_modelslim::check_packed_weight(weight, k_size, kBlockK, "the contiguous packed uint8 [N/16, K/4, 64] int8 weight");
  const int64_t n_size = weight.size(0) * kTileN;
  vllm_modelslim::check_channel_vector(scale, n_size, "scale");
  vllm_modelslim::check_channel_vector(zero_point, n_size, "zero_point");
  vllm_modelslim::check_channel_vector(bias, n_size, "bias");
  auto y = at::empty({m_size, n_size}, x.options());
  if (m_size == 0) return y;
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  auto fill_panel = [&](int64_t n0, int tiles, int64_t k0, int64_t k1, uint32_t* panel) {
    const __m512i byte = _mm512_set1_epi32(0xFF), offset = _mm512_set1_epi32(128);
    for (int ti = 0; ti < tiles; ++ti) {
      const uint8_t* tile = w + (n0 / kTileN + ti) * tile_bytes;
      for (int64_t k = k0; k < k1; k += kBlockK) {
        const __m512i v = _mm512_loadu_si512(tile + k / kBlockK * kBlockBytes);
        __m512 q[kBlockK];
        for (int t = 0; t < kBlockK; ++t) {
          q[t] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(v, 8 * t), byte), offset));
        }
        uint32_t* pair = panel + (k - k0) / 2 * vllm_modelslim::kPanelWidth + kTileN * ti;
        _mm512_storeu_si512(pair, vllm_modelslim::bf16_pairs(q[0], q[1]));
        _mm512_storeu_si512(pair + vllm_modelslim::kPanelWidth, vllm_modelslim::bf16_pairs(q[2], q[3]));
      }
    }
  };
  std::vector<float> sums = zero_point.has_value() ? row_sums(xp, m_size, k_size) : std::vector<float>();
  vllm_modelslim::PanelEpilogue epilogue;
  epilogue.scale = scale.data_ptr<float>();
  epilogue.zero_point = zero_point.has_value() ? zero_point->data_ptr<float>() : nullptr;
  epilogue.row_sums = sums.data();
  epilogue.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  vllm_modelslim::dequant_panel_gemm(xp, m_size, k_size, n_size, fill_panel, epilogue, y.data_ptr<at::BFloat16>());
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def("int8_weight_bf16_gemm(Tensor x, Tensor weight, Tensor scale, Tensor? zero_point, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) { m.impl("int8_weight_bf16_gemm", &int8_weight_bf16_gemm); }
