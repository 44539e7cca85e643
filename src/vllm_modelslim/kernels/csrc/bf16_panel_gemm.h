// bf16 GEMM over a weight dequantized panel by panel in cache (the many-rows path of the weight-only
// ops): y[m, n] = epilogue(Σ_k x[m, k]·W[n, k]), x bf16 [M, K], W produced 64 output channels × 512
// k at a time by the caller's panel filler, products exact in float32 (vdpbf16ps), float32 sums.
//
// Needs AVX512F/BW and AVX512-BF16 (the including source is built with them). The weight never
// exists as a whole in bf16: each thread fills one 64 KiB panel, multiplies every row of x with it,
// then fills the next; the dequantization costs one pass over the packed weight per call, in cache,
// instead of writing and re-reading a bf16 copy (25 MB for a 2048 × 6144 layer).
//
// Blocking (the shape of oneDNN's brgemm bf16 kernel, measured at 94–96 % of vLLM's prepacked oneDNN
// GEMM on a 2-core AMD EPYC with AVX512-BF16 at M = 512, K = 2048 / 6144, N = 6144 / 2048): output
// channels in strips of 64 (four zmm of float32 sums), k in chunks of 512, rows in blocks of 6
// (24 accumulators, four weight vectors, one broadcast pair of x).
//
// Panel layout: uint32 [k_chunk / 2][64]; word (p, c) holds the bf16 bits of W[n0 + c, k0 + 2p] in
// its low half and of W[n0 + c, k0 + 2p + 1] in its high half (vdpbf16ps's pair order). A strip of
// fewer than 64 channels (N % 64) uses the first 16·tiles words of each row of 64.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "avx512_vectors.h"

namespace vllm_modelslim {

constexpr int64_t kPanelTiles = 4;                 // 16-channel tiles per strip
constexpr int64_t kPanelWidth = 16 * kPanelTiles;  // output channels per strip
constexpr int64_t kPanelK = 512;                   // k per panel
constexpr int kPanelRows = 6;                      // rows of x per register block

// (acc − z[n]·row_sums[m])·s[n] + b[n] in float32, each term only where its pointer is set, rounded
// once to bf16.
struct PanelEpilogue {
  const float* scale = nullptr;      // [N]
  const float* zero_point = nullptr;  // [N], with row_sums
  const float* row_sums = nullptr;    // [M]: Σ_k x[m, k]
  const float* bias = nullptr;        // [N]
};

// Bits of bf16 values packed as vdpbf16ps pairs: lane j = bf16(lo[j]) | bf16(hi[j]) << 16, each
// rounded to nearest even as torch rounds (NaN stays a quiet NaN).
inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
  return _mm512_or_si512(bf16_bits(lo), _mm512_slli_epi32(bf16_bits(hi), 16));
}

template <int kTiles>
inline void panel_rows(const at::BFloat16* x, int64_t k_size, int rows, const uint32_t* panel, int64_t pairs,
                       float* partial, bool first, bool last, const PanelEpilogue& ep, int64_t m0, int64_t n0,
                       at::BFloat16* y, int64_t n_size) {
  __m512 acc[kPanelRows][kTiles];
  for (int i = 0; i < kPanelRows; ++i) {
    for (int t = 0; t < kTiles; ++t) {
      acc[i][t] = (first || i >= rows) ? _mm512_setzero_ps() : _mm512_loadu_ps(partial + i * kPanelWidth + 16 * t);
    }
  }
  const uint32_t* row[kPanelRows];
  for (int i = 0; i < kPanelRows; ++i) row[i] = reinterpret_cast<const uint32_t*>(x + (i < rows ? i : 0) * k_size);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i w[kTiles];
    for (int t = 0; t < kTiles; ++t) w[t] = _mm512_loadu_si512(panel + p * kPanelWidth + 16 * t);
    for (int i = 0; i < kPanelRows; ++i) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(row[i][p]));
      for (int t = 0; t < kTiles; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], xv, (__m512bh)w[t]);
    }
  }
  for (int i = 0; i < rows; ++i) {
    for (int t = 0; t < kTiles; ++t) {
      if (!last) {
        _mm512_storeu_ps(partial + i * kPanelWidth + 16 * t, acc[i][t]);
        continue;
      }
      const int64_t n = n0 + 16 * t;
      __m512 v = acc[i][t];
      if (ep.zero_point != nullptr) {
        v = _mm512_sub_ps(v, _mm512_mul_ps(_mm512_loadu_ps(ep.zero_point + n), _mm512_set1_ps(ep.row_sums[m0 + i])));
      }
      if (ep.scale != nullptr) v = _mm512_mul_ps(v, _mm512_loadu_ps(ep.scale + n));
      if (ep.bias != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(ep.bias + n));
      store16(y + (m0 + i) * n_size + n, v);
    }
  }
}

using PanelRowsFn = void (*)(const at::BFloat16*, int64_t, int, const uint32_t*, int64_t, float*, bool, bool,
                             const PanelEpilogue&, int64_t, int64_t, at::BFloat16*, int64_t);
constexpr PanelRowsFn kPanelRowsFns[kPanelTiles] = {panel_rows<1>, panel_rows<2>, panel_rows<3>, panel_rows<4>};

// y = epilogue(x · Wᵀ): x bf16 [M, K] contiguous (K even), y bf16 [M, N] contiguous (N % 16 == 0).
// fill_panel(n0, tiles, k0, k1, panel) writes W[n0 : n0 + 16·tiles, k0 : k1) into panel in the
// layout above (k0 and k1 multiples of kPanelK, or k1 = K); it runs on the calling thread of
// at::parallel_for, once per strip and chunk.
template <typename FillPanel>
void dequant_panel_gemm(const at::BFloat16* x, int64_t m_size, int64_t k_size, int64_t n_size,
                        const FillPanel& fill_panel, const PanelEpilogue& ep, at::BFloat16* y) {
  const int64_t strips = (n_size + kPanelWidth - 1) / kPanelWidth;
  at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> panel(kPanelK / 2 * kPanelWidth);
    std::vector<float> partial(k_size > kPanelK ? m_size * kPanelWidth : 0);
    for (int64_t strip = begin; strip < end; ++strip) {
      const int64_t n0 = strip * kPanelWidth;
      const int tiles = static_cast<int>(std::min<int64_t>(kPanelTiles, (n_size - n0) / 16));
      for (int64_t k0 = 0; k0 < k_size; k0 += kPanelK) {
        const int64_t k1 = std::min(k_size, k0 + kPanelK);
        fill_panel(n0, tiles, k0, k1, panel.data());
        for (int64_t m0 = 0; m0 < m_size; m0 += kPanelRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kPanelRows, m_size - m0));
          kPanelRowsFns[tiles - 1](x + m0 * k_size + k0, k_size, rows, panel.data(), (k1 - k0) / 2,
                                   partial.data() + m0 * kPanelWidth, k0 == 0, k1 == k_size, ep, m0, n0, y,
                                   n_size);
        }
      }
    }
  });
}

}  // namespace vllm_modelslim
