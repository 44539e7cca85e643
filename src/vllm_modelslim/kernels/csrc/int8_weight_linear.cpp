// Weight-only int8 (W8A16) for few rows on x86 AVX-512: float activations × int8 weights, float32 math.
//
// y[m, n] = (Σ_k x[m, k]·q[n, k] − z[n]·Σ_k x[m, k])·s[n] + b[n]   (ModelSlim W8A16, zero point subtracted)
//
// Each product of a bf16 (or float32) activation and an int8 weight is formed in float32 (exact for
// bf16: 8 × 8 significant bits) and summed in float32, 16 lanes per register; the epilogue is float32
// and the result is rounded once to the output dtype. Weights stay int8 [N, K] row-major (K a multiple
// of 16) and are converted in registers, so a call reads one byte per weight: batch-1 decode is
// bound by memory bandwidth at half the bytes of bf16.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "avx512_vectors.h"
#include "op_checks.h"

namespace {

constexpr int kChannels = 4;  // output channels per block
constexpr int kMaxRows = 4;   // activation rows per register block

using vllm_modelslim::load16;

inline void store1(float* p, float v) { *p = v; }
inline void store1(at::BFloat16* p, float v) { *p = at::BFloat16(v); }  // round to nearest even

// R rows × C (≤ kChannels) channels starting at n0: float32 dot products, then the epilogue.
template <int R, int C, typename T>
void block(const T* x, int64_t k_size, const int8_t* w, const float* row_sums, const float* scale,
           const float* zero, const float* bias, int64_t n0, T* y, int64_t n_size) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int8_t* rows[C];
  for (int c = 0; c < C; ++c) rows[c] = w + (n0 + c) * k_size;
  for (int64_t k = 0; k < k_size; k += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = load16(x + r * k_size + k);
    for (int c = 0; c < C; ++c) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[c] + k));
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const int64_t n = n0 + c;
      float v = _mm512_reduce_add_ps(acc[r][c]);
      if (zero != nullptr) v -= zero[n] * row_sums[r];
      v *= scale[n];
      if (bias != nullptr) v += bias[n];
      store1(y + r * n_size + n, v);
    }
  }
}

template <int C, typename T>
void rows_block(int rows, const T* x, int64_t k_size, const int8_t* w, const float* row_sums, const float* scale,
                const float* zero, const float* bias, int64_t n0, T* y, int64_t n_size) {
  switch (rows) {
    case 1: return block<1, C, T>(x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    case 2: return block<2, C, T>(x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    case 3: return block<3, C, T>(x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    default: return block<4, C, T>(x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
  }
}

template <typename T>
void channels_block(int channels, int rows, const T* x, int64_t k_size, const int8_t* w, const float* row_sums,
                    const float* scale, const float* zero, const float* bias, int64_t n0, T* y, int64_t n_size) {
  switch (channels) {
    case 1: return rows_block<1, T>(rows, x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    case 2: return rows_block<2, T>(rows, x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    case 3: return rows_block<3, T>(rows, x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
    default: return rows_block<4, T>(rows, x, k_size, w, row_sums, scale, zero, bias, n0, y, n_size);
  }
}

template <typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                 const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m_size = x.size(0), k_size = x.size(1), n_size = w.size(0);
  const T* x_ptr = x.data_ptr<T>();
  std::vector<float> row_sums(m_size, 0.0f);
  if (zero.has_value()) {
    for (int64_t m = 0; m < m_size; ++m) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t k = 0; k < k_size; k += 16) sum = _mm512_add_ps(sum, load16(x_ptr + m * k_size + k));
      row_sums[m] = _mm512_reduce_add_ps(sum);
    }
  }
  const int8_t* w_ptr = w.data_ptr<int8_t>();
  const float* s_ptr = scale.data_ptr<float>();
  const float* z_ptr = zero.has_value() ? zero->data_ptr<float>() : nullptr;
  const float* b_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* y_ptr = y.data_ptr<T>();
  const int64_t blocks = (n_size + kChannels - 1) / kChannels;
  at::parallel_for(0, blocks, 8, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * kChannels;
      const int channels = static_cast<int>(std::min<int64_t>(kChannels, n_size - n0));
      for (int64_t m0 = 0; m0 < m_size; m0 += kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, m_size - m0));
        channels_block<T>(channels, rows, x_ptr + m0 * k_size, k_size, w_ptr, row_sums.data() + m0, s_ptr, z_ptr,
                          b_ptr, n0, y_ptr + m0 * n_size, n_size);
      }
    }
  });
}

}  // namespace

// x [M, K] bf16 or float32 contiguous (K % 16 == 0); weight int8 [N, K]; scale float32 [N];
// zero_point and bias float32 [N] or None. Returns [M, N] in x's dtype.
at::Tensor int8_weight_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                              const c10::optional<at::Tensor>& zero_point, const c10::optional<at::Tensor>& bias) {
  vllm_modelslim::check_activation_rows(x);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.size(1) == x.size(1),
              "weight must be a contiguous int8 [N, K] tensor with x's K");
  const int64_t n_size = weight.size(0);
  vllm_modelslim::check_channel_vector(scale, n_size, "scale");
  vllm_modelslim::check_channel_vector(zero_point, n_size, "zero_point");
  vllm_modelslim::check_channel_vector(bias, n_size, "bias");
  auto y = at::empty({x.size(0), n_size}, x.options());
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    linear_impl<at::BFloat16>(x, weight, scale, zero_point, bias, y);
  } else {
    linear_impl<float>(x, weight, scale, zero_point, bias, y);
  }
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def("int8_weight_linear(Tensor x, Tensor weight, Tensor scale, Tensor? zero_point, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) { m.impl("int8_weight_linear", &int8_weight_linear); }
