// Weight-only int4 (W4A16) on x86 AVX-512 BF16: bf16 activations × int4 weights, float32 sums.
//
// y[m, n] = Σ_g s[g, n]·(Σ_{k∈g} x[m, k]·q[n, k] − z[g, n]·Σ_{k∈g} x[m, k]) + b[n]
// (ModelSlim W4A16 / LLM-Compressor wNa16: W = (q − z)·s, zero point subtracted, per K-group g.)
//
// int4_bf16_linear (few rows): the int4 values q stay packed two per byte and become bf16 in
// registers through a 16-entry table (vpermw; every q in [−8, 7] is exact in bf16); vdpbf16ps then
// forms two bf16 × bf16 products per float32 lane (each exact in float32) and adds them to the
// group's float32 sums, 16 output channels per register. Per group, the sums take the zero point
// and the scale in float32; the result is rounded once to bf16. A decode step reads half a byte
// per weight.
//
// int4_bf16_gemm (many rows, CPUs without AMX): W = (q − z)·s in float32, rounded once to bf16, one
// 64 × 512 panel at a time in cache, multiplied by the bf16 panel GEMM (bf16_panel_gemm.h).
//
// int4_bf16_dequant (many rows, AMX CPUs): the same W written as Wᵀ [K, columns] for oneDNN's bf16
// GEMM, which runs on AMX tiles there.
//
// Weight layout: the project's int4 layout (cpu_int4_vnni.pack_int4_vnni), uint8 [N/16, K/8, 16, 4]:
// byte (tile, kb, j, t) holds u = q + 8 of channel 16·tile + j at k = 8·kb + t in its low nibble
// and at k = 8·kb + 4 + t in its high nibble. Read as 16-bit words, word 2j + h of a 64-byte block
// holds, from its low bits up, k = 8·kb + {2h, 2h + 4, 2h + 1, 2h + 5}: nibble i of every word is
// then one vdpbf16ps operand whose lane j pairs k = {0, 2}, {4, 6}, {1, 3}, {5, 7} (i = 0..3) of
// channel j, so each row of x is reordered once per call to x0 x2 x4 x6 x1 x3 x5 x7 per block of 8.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_vectors.h"
#include "bf16_panel_gemm.h"
#include "op_checks.h"

namespace {

constexpr int64_t kTileN = 16;       // output channels per tile: one zmm of float32 sums
constexpr int64_t kBlockK = 8;       // k per 64-byte weight block
constexpr int64_t kBlockBytes = 64;
constexpr int kMaxRows = 8;          // activation rows per register block
constexpr int64_t kPrefetchBlocks = 16;  // weight blocks (1 KiB) the loop prefetches ahead

using vllm_modelslim::load16;
using vllm_modelslim::store16;

// vpermw table: word u (0..15) holds the bf16 bits of u − 8.
__m512i nibble_table() {
  alignas(64) uint16_t words[32] = {};
  for (int u = 0; u < 16; ++u) words[u] = c10::BFloat16(static_cast<float>(u - 8)).x;
  return _mm512_load_si512(words);
}

// Each row of x reordered per block of 8 (x0 x2 x4 x6 x1 x3 x5 x7, as bf16 bits), and, with zero
// points, its per-group sums Σ_{k∈g} x in float32.
void prepare_rows(const at::BFloat16* x, int64_t m_size, int64_t k_size, int64_t group, bool sums,
                  uint16_t* reordered, float* group_sums) {
  static constexpr int kOrder[kBlockK] = {0, 2, 4, 6, 1, 3, 5, 7};
  const int64_t groups = k_size / group;
  for (int64_t m = 0; m < m_size; ++m) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(x + m * k_size);
    uint16_t* out = reordered + m * k_size;
    for (int64_t k = 0; k < k_size; k += kBlockK) {
      for (int i = 0; i < kBlockK; ++i) out[k + i] = row[k + kOrder[i]];
    }
    if (!sums) continue;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 acc = _mm512_setzero_ps();
      int64_t k = g * group;
      for (; k + 16 <= (g + 1) * group; k += 16) acc = _mm512_add_ps(acc, load16(x + m * k_size + k));
      float sum = _mm512_reduce_add_ps(acc);
      for (; k < (g + 1) * group; ++k) sum += static_cast<float>(x[m * k_size + k]);
      group_sums[m * groups + g] = sum;
    }
  }
}

inline __m512 dot_pair(__m512 acc, __m512i weights, uint32_t x_pair) {
  return _mm512_dpbf16_ps(acc, (__m512bh)weights, (__m512bh)_mm512_set1_epi32(static_cast<int>(x_pair)));
}

// R rows × one tile of 16 channels: y[r, n0 .. n0 + 16) = Σ_g s·(Σ q·x − z·Σ x) + b, rounded to bf16.
template <int R>
void tile_rows(const uint16_t* xr, const float* group_sums, int64_t k_size, int64_t group, const uint8_t* tile,
               const float* scale, const float* zero, const float* bias, int64_t n0, int64_t n_size,
               at::BFloat16* y) {
  const __m512i table = nibble_table();
  const __m512i low4 = _mm512_set1_epi16(0xF);
  const int64_t groups = k_size / group;
  __m512 total[R];
  for (int r = 0; r < R; ++r) total[r] = _mm512_setzero_ps();
  // Independent sums per row (A of them) so that at least 8 vdpbf16ps chains are in flight: one
  // chain of four per block would wait on the instruction's latency at few rows.
  constexpr int A = R <= 2 ? 4 : (R <= 4 ? 2 : 1);
  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[R][A];
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[r][a] = _mm512_setzero_ps();
    for (int64_t kb = g * group / kBlockK; kb < (g + 1) * group / kBlockK; ++kb) {
      const uint8_t* block = tile + kb * kBlockBytes;
      _mm_prefetch(reinterpret_cast<const char*>(block + kPrefetchBlocks * kBlockBytes), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(block);
      const __m512i w0 = _mm512_permutexvar_epi16(_mm512_and_si512(v, low4), table);
      const __m512i w1 = _mm512_permutexvar_epi16(_mm512_and_si512(_mm512_srli_epi16(v, 4), low4), table);
      const __m512i w2 = _mm512_permutexvar_epi16(_mm512_and_si512(_mm512_srli_epi16(v, 8), low4), table);
      const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table);
      for (int r = 0; r < R; ++r) {
        uint32_t pairs[4];
        std::memcpy(pairs, xr + r * k_size + kb * kBlockK, sizeof(pairs));
        acc[r][0] = dot_pair(acc[r][0], w0, pairs[0]);
        acc[r][1 % A] = dot_pair(acc[r][1 % A], w1, pairs[1]);
        acc[r][2 % A] = dot_pair(acc[r][2 % A], w2, pairs[2]);
        acc[r][3 % A] = dot_pair(acc[r][3 % A], w3, pairs[3]);
      }
    }
    __m512 sums[R];
    for (int r = 0; r < R; ++r) {
      sums[r] = acc[r][0];
      for (int a = 1; a < A; ++a) sums[r] = _mm512_add_ps(sums[r], acc[r][a]);
    }
    const __m512 s = _mm512_loadu_ps(scale + g * n_size + n0);
    if (zero != nullptr) {
      const __m512 z = _mm512_loadu_ps(zero + g * n_size + n0);
      for (int r = 0; r < R; ++r) sums[r] = _mm512_fnmadd_ps(z, _mm512_set1_ps(group_sums[r * groups + g]), sums[r]);
    }
    for (int r = 0; r < R; ++r) total[r] = _mm512_fmadd_ps(sums[r], s, total[r]);
  }
  const __m512 b = bias != nullptr ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  for (int r = 0; r < R; ++r) store16(y + r * n_size + n0, _mm512_add_ps(total[r], b));
}

using TileRowsFn = void (*)(const uint16_t*, const float*, int64_t, int64_t, const uint8_t*, const float*,
                            const float*, const float*, int64_t, int64_t, at::BFloat16*);
constexpr TileRowsFn kTileRows[kMaxRows] = {tile_rows<1>, tile_rows<2>, tile_rows<3>, tile_rows<4>,
                                            tile_rows<5>, tile_rows<6>, tile_rows<7>, tile_rows<8>};

void check_weight(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero,
                  int64_t k_size, int64_t group) {
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.size(1) * kBlockK == k_size && weight.size(2) == kBlockBytes,
              "weight must be the contiguous packed uint8 [N/16, K/8, 64] int4 weight of K inputs");
  TORCH_CHECK(group > 0 && group % kBlockK == 0 && k_size % group == 0,
              "group_size must be a multiple of 8 that divides K");
  const int64_t n_size = weight.size(0) * kTileN;
  for (const auto* t : {&scale, zero.has_value() ? &zero.value() : nullptr}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 &&
                    t->size(0) == k_size / group && t->size(1) == n_size,
                "scale and zero_point must be contiguous float32 [K / group_size, N] tensors");
  }
}

// The checks of both linear ops, before any compute; returns N.
int64_t check_arguments(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                        const c10::optional<at::Tensor>& zero_point, const c10::optional<at::Tensor>& bias,
                        int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              "x must be a contiguous bf16 [M, K] tensor");
  check_weight(weight, scale, zero_point, x.size(1), group_size);
  const int64_t n_size = weight.size(0) * kTileN;
  vllm_modelslim::check_channel_vector(bias, n_size, "bias");
  return n_size;
}

}  // namespace

// x bf16 [M, K] contiguous (K % 8 == 0); weight uint8 [N/16, K/8, 64]; scale float32 [K/g, N];
// zero_point float32 [K/g, N] or None; bias float32 [N] or None. Returns bf16 [M, N].
at::Tensor int4_bf16_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                            const c10::optional<at::Tensor>& zero_point, const c10::optional<at::Tensor>& bias,
                            int64_t group_size) {
  const int64_t n_size = check_arguments(x, weight, scale, zero_point, bias, group_size);
  const int64_t m_size = x.size(0), k_size = x.size(1);
  auto y = at::empty({m_size, n_size}, x.options());
  if (m_size == 0) return y;
  const int64_t groups = k_size / group_size;
  std::vector<uint16_t> reordered(m_size * k_size);
  std::vector<float> group_sums(zero_point.has_value() ? m_size * groups : 0);
  prepare_rows(x.data_ptr<at::BFloat16>(), m_size, k_size, group_size, zero_point.has_value(), reordered.data(),
               group_sums.data());
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  const float* z = zero_point.has_value() ? zero_point->data_ptr<float>() : nullptr;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::BFloat16* out = y.data_ptr<at::BFloat16>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  at::parallel_for(0, weight.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      for (int64_t m0 = 0; m0 < m_size; m0 += kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, m_size - m0));
        kTileRows[rows - 1](reordered.data() + m0 * k_size, z ? group_sums.data() + m0 * groups : nullptr, k_size,
                            group_size, w + tile * tile_bytes, s, z, b, tile * kTileN, n_size, out + m0 * n_size);
      }
    }
  });
  return y;
}

// The same product for many rows: W = (q − z)·s in float32, rounded once to bf16, dequantized 64
// channels × 512 k at a time into a panel in cache and multiplied by vdpbf16ps (bf16_panel_gemm.h);
// float32 sums, bias added in float32, rounded once. Arguments as int4_bf16_linear; returns bf16 [M, N].
at::Tensor int4_bf16_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& zero_point, const c10::optional<at::Tensor>& bias,
                          int64_t group_size) {
  const int64_t n_size = check_arguments(x, weight, scale, zero_point, bias, group_size);
  const int64_t m_size = x.size(0), k_size = x.size(1);
  auto y = at::empty({m_size, n_size}, x.options());
  if (m_size == 0) return y;
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  const float* z = zero_point.has_value() ? zero_point->data_ptr<float>() : nullptr;
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  auto fill_panel = [&](int64_t n0, int tiles, int64_t k0, int64_t k1, uint32_t* panel) {
    const __m512i low4 = _mm512_set1_epi32(0xF);
    for (int ti = 0; ti < tiles; ++ti) {
      const int64_t n = n0 + kTileN * ti;
      const uint8_t* tile = w + n / kTileN * tile_bytes;
      for (int64_t k = k0; k < k1; k += kBlockK) {
        const int64_t g = k / group_size;
        const __m512 sv = _mm512_loadu_ps(s + g * n_size + n);
        __m512 offset = _mm512_set1_ps(8.0f);  // u − 8 − z = q − z
        if (z != nullptr) offset = _mm512_add_ps(offset, _mm512_loadu_ps(z + g * n_size + n));
        const __m512i v = _mm512_loadu_si512(tile + k / kBlockK * kBlockBytes);
        for (int half = 0; half < 2; ++half) {
          __m512 value[4];
          for (int t = 0; t < 4; ++t) {
            const __m512i u = _mm512_and_si512(_mm512_srli_epi32(v, 8 * t + 4 * half), low4);
            value[t] = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(u), offset), sv);
          }
          uint32_t* pair = panel + (k + 4 * half - k0) / 2 * vllm_modelslim::kPanelWidth + kTileN * ti;
          _mm512_storeu_si512(pair, vllm_modelslim::bf16_pairs(value[0], value[1]));
          _mm512_storeu_si512(pair + vllm_modelslim::kPanelWidth, vllm_modelslim::bf16_pairs(value[2], value[3]));
        }
      }
    }
  };
  vllm_modelslim::PanelEpilogue epilogue;
  epilogue.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  vllm_modelslim::dequant_panel_gemm(x.data_ptr<at::BFloat16>(), m_size, k_size, n_size, fill_panel, epilogue,
                                     y.data_ptr<at::BFloat16>());
  return y;
}

// Wᵀ[:, col_start : col_stop) of the packed weight as bf16, written into out (bf16 [K, col_stop −
// col_start], contiguous): W = (q − z)·s in float32, rounded once. Columns are whole tiles.
void int4_bf16_dequant(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& zero_point,
                       int64_t group_size, int64_t col_start, int64_t col_stop, const at::Tensor& out) {
  const int64_t k_size = weight.size(1) * kBlockK;
  check_weight(weight, scale, zero_point, k_size, group_size);
  const int64_t n_size = weight.size(0) * kTileN;
  TORCH_CHECK(col_start % kTileN == 0 && col_stop % kTileN == 0 && 0 <= col_start && col_start < col_stop &&
                  col_stop <= n_size,
              "columns must be whole 16-channel tiles within N");
  const int64_t cols = col_stop - col_start;
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.is_contiguous() && out.numel() == k_size * cols,
              "out must be a contiguous bf16 buffer of K × columns elements");
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  const float* z = zero_point.has_value() ? zero_point->data_ptr<float>() : nullptr;
  at::BFloat16* o = out.data_ptr<at::BFloat16>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  const __m512i low4 = _mm512_set1_epi32(0xF);
  at::parallel_for(col_start / kTileN, col_stop / kTileN, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTileN;
      at::BFloat16* column = o + (n0 - col_start);
      for (int64_t g = 0; g < k_size / group_size; ++g) {
        const __m512 sv = _mm512_loadu_ps(s + g * n_size + n0);
        __m512 offset = _mm512_set1_ps(8.0f);  // u − 8 − z = q − z
        if (z != nullptr) offset = _mm512_add_ps(offset, _mm512_loadu_ps(z + g * n_size + n0));
        for (int64_t kb = g * group_size / kBlockK; kb < (g + 1) * group_size / kBlockK; ++kb) {
          const __m512i v = _mm512_loadu_si512(w + tile * tile_bytes + kb * kBlockBytes);
          for (int t = 0; t < 4; ++t) {
            for (int half = 0; half < 2; ++half) {
              const __m512i u = _mm512_and_si512(_mm512_srli_epi32(v, 8 * t + 4 * half), low4);
              const __m512 value = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(u), offset), sv);
              store16(column + (kb * kBlockK + 4 * half + t) * cols, value);
            }
          }
        }
      }
    }
  });
}

TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def(
      "int4_bf16_linear(Tensor x, Tensor weight, Tensor scale, Tensor? zero_point, Tensor? bias, int group_size) "
      "-> Tensor");
  m.def(
      "int4_bf16_gemm(Tensor x, Tensor weight, Tensor scale, Tensor? zero_point, Tensor? bias, int group_size) "
      "-> Tensor");
  m.def(
      "int4_bf16_dequant(Tensor weight, Tensor scale, Tensor? zero_point, int group_size, int col_start, "
      "int col_stop, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) {
  m.impl("int4_bf16_linear", &int4_bf16_linear);
  m.impl("int4_bf16_gemm", &int4_bf16_gemm);
  m.impl("int4_bf16_dequant", &int4_bf16_dequant);
}
