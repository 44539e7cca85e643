// Exact int8 × int8 GEMM with an int32 bias on x86 AVX-512 VNNI (ModelSlim W8A8 static: quant_bias).
//
// y[m, n] = float32(Σ_k x_q[m, k]·w_q[n, k] + b_int[n])
//
// the accumulator that torch._int_mm plus the int32 bias gives, converted once: the caller applies
// the float32 scales (deq_scale, an activation scale) and the float bias as for any int8 kernel.
// vpdpbusd multiplies unsigned by signed bytes, so each activation enters as x_q + 128 (its sign
// bit flipped, one xor per byte) and the excess 128·Σ_k w_q[n, k] leaves with the bias in one
// per-channel int32 constant, compensation[n] = 128·Σ_k w_q[n, k] − b_int[n] (made by the Python
// side). The sums are exact in int32 (|x_q + 128| ≤ 255, |w_q| ≤ 128: K up to 65 793 cannot
// overflow), and the final subtraction wraps as torch's int32 addition of the bias would.
//
// Weight layout (made by the Python side): int8 [N/16, K/4, 16, 4]; byte (tile, kq, j, t) holds
// w_q[16·tile + j, 4·kq + t], so one 64-byte block is one vpdpbusd operand (four k per int32 lane).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kTileN = 16;       // output channels per tile: one zmm of int32 sums
constexpr int64_t kBlockK = 4;       // k per 64-byte weight block
constexpr int64_t kBlockBytes = 64;
constexpr int kMaxRows = 8;          // activation rows per register block
constexpr int64_t kPrefetchBlocks = 4;   // weight blocks (256 bytes) the loop prefetches ahead

// R rows × one tile: U independent vpdpbusd chains per row (consecutive blocks), so that at few
// rows the loop does not wait on the instruction's latency; integer sums, so their order is free.
template <int R>
void tile_rows(const uint8_t* xu, int64_t k_size, const int8_t* tile, const int32_t* compensation, float* y,
               int64_t n_size) {
  constexpr int U = R <= 2 ? 4 : (R <= 4 ? 2 : 1);
  __m512i acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_si512();
  const int64_t blocks = k_size / kBlockK;  // a multiple of U (K % 16 == 0)
  for (int64_t kq = 0; kq < blocks; kq += U) {
    _mm_prefetch(reinterpret_cast<const char*>(tile + (kq + kPrefetchBlocks) * kBlockBytes), _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const __m512i w = _mm512_loadu_si512(tile + (kq + u) * kBlockBytes);
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, xu + r * k_size + (kq + u) * kBlockK, 4);
        acc[u][r] = _mm512_dpbusd_epi32(acc[u][r], _mm512_set1_epi32(quad), w);
      }
    }
  }
  const __m512i c = _mm512_loadu_si512(compensation);
  for (int r = 0; r < R; ++r) {
    __m512i sum = acc[0][r];
    for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, acc[u][r]);
    _mm512_storeu_ps(y + r * n_size, _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, c)));
  }
}

using TileRowsFn = void (*)(const uint8_t*, int64_t, const int8_t*, const int32_t*, float*, int64_t);
constexpr TileRowsFn kTileRows[kMaxRows] = {tile_rows<1>, tile_rows<2>, tile_rows<3>, tile_rows<4>,
                                            tile_rows<5>, tile_rows<6>, tile_rows<7>, tile_rows<8>};

}  // namespace

// x_q int8 [M, K] contiguous (K % 16 == 0); weight int8 [N/16, K/4, 64]; compensation int32 [N].
// Returns float32 [M, N].
at::Tensor int8_vnni_gemm(const at::Tensor& x_q, const at::Tensor& weight, const at::Tensor& compensation) {
  TORCH_CHECK(x_q.dim() == 2 && x_q.is_contiguous() && x_q.scalar_type() == at::kChar,
              "x_q must be a contiguous int8 [M, K] tensor");
  const int64_t m_size = x_q.size(0), k_size = x_q.size(1);
  TORCH_CHECK(k_size % 16 == 0, "K must be a multiple of 16");
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.size(1) * kBlockK == k_size && weight.size(2) == kBlockBytes,
              "weight must be the contiguous packed int8 [N/16, K/4, 64] weight of K inputs");
  const int64_t n_size = weight.size(0) * kTileN;
  TORCH_CHECK(compensation.scalar_type() == at::kInt && compensation.is_contiguous() &&
                  compensation.numel() == n_size,
              "compensation must be a contiguous int32 [N] tensor");
  auto y = at::empty({m_size, n_size}, x_q.options().dtype(at::kFloat));
  if (m_size == 0) return y;
  // x_q + 128 as unsigned bytes: the sign bit flipped.
  auto shifted = at::empty({m_size, k_size}, x_q.options().dtype(at::kByte));
  const uint8_t* src = reinterpret_cast<const uint8_t*>(x_q.data_ptr<int8_t>());
  uint8_t* xu = shifted.data_ptr<uint8_t>();
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < m_size * k_size; i += 64) {
    if (i + 64 <= m_size * k_size) {
      _mm512_storeu_si512(xu + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), sign));
    } else {
      for (int64_t j = i; j < m_size * k_size; ++j) xu[j] = src[j] ^ 0x80;
    }
  }
  const int8_t* w = weight.data_ptr<int8_t>();
  const int32_t* comp = compensation.data_ptr<int32_t>();
  float* out = y.data_ptr<float>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  at::parallel_for(0, weight.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTileN;
      for (int64_t m0 = 0; m0 < m_size; m0 += kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, m_size - m0));
        kTileRows[rows - 1](xu + m0 * k_size, k_size, w + tile * tile_bytes, comp + n0, out + m0 * n_size + n0,
                            n_size);
      }
    }
  });
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def("int8_vnni_gemm(Tensor x_q, Tensor weight, Tensor compensation) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) { m.impl("int8_vnni_gemm", &int8_vnni_gemm); }
