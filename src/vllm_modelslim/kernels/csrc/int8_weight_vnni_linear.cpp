// Weight-only int8 (W8A16) on x86 AVX-512 VNNI: float activations split into int8 limbs, integer products.
//
// y[m, n] = (Σ_k x[m, k]·q[n, k] − z[n]·Σ_k x[m, k])·s[n] + b[n]   (ModelSlim W8A16, zero point subtracted)
//
// int8_weight_vnni_linear (few rows): each row of x is written exactly as four signed 7-bit limbs
// below its largest power of two, x[k] = 2^(E−6)·(a0[k] + a1[k]·2^−7 + a2[k]·2^−14 + a3[k]·2^−21) with
// 2^E ≤ max_k |x[k]| < 2^(E+1): the first three limbs truncate (exact: each residual is a float32
// difference of nearby values, scaled by a power of two) and the last one rounds, so an activation
// is exact when its lowest bit is at or above 2^(E−27) (every bf16 value within 2^−20 of the row
// maximum) and off by at most 2^(E−28) otherwise, below float32's own rounding of the sums. Each
// limb times the int8 weight is an exact int32 sum (vpdpbusd: the weight bytes u = q + 128 unsigned,
// the limbs signed, 128·Σ_k a_j[k] subtracted), so no weight is ever converted to float: a decode
// step reads one byte per weight and does four dot-product instructions per 64 of them. The four
// sums are converted and added in float32 (smallest first) and the epilogue is float32, rounded
// once to the output dtype.
//
// int8_weight_vnni_unpack (many rows): q as float32 or bf16 (exact) written as Wᵀ [K, columns] for
// a float GEMM (the caller's epilogue then applies z and s).
//
// int8_weight_vnni_moe: a whole MoE layer of W8A16 SwiGLU experts with the few-rows products above
// (see the op's comment).
//
// Weight layout (made by the Python side): uint8 [N/16, K/4, 16, 4]; byte (tile, kq, j, t) holds
// u = q + 128 of channel 16·tile + j at k = 4·kq + t.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_vectors.h"
#include "expert_groups.h"
#include "op_checks.h"
#include "swiglu.h"

namespace {

constexpr int64_t kTileN = 16;    // output channels per tile: one zmm of int32 sums
constexpr int64_t kBlockK = 4;    // k per 64-byte weight block
constexpr int64_t kBlockBytes = 64;
constexpr int kLimbs = 4;
constexpr int kMaxRows = 4;       // activation rows per register block (4 sums each)
constexpr int64_t kPrefetchBlocks = 4;

using vllm_modelslim::load16;
using vllm_modelslim::store16;

// The rows' limbs, their sums, Σ_k x (float32) and the factors 2^(E−6). Limbs are stored per block
// of 4 k: [rows][K/4][kLimbs][4] int8, so a block's four operands are one 16-byte read.
struct RowLimbs {
  std::vector<int8_t> limbs;  // [rows][K/4][kLimbs][4]
  std::vector<int32_t> sums;  // [rows][kLimbs]
  std::vector<float> row_sums, factors;
};

template <typename T>
void split_rows(const T* x, int64_t m_size, int64_t k_size, RowLimbs& out) {
  out.limbs.assign(m_size * kLimbs * k_size, 0);
  out.sums.assign(m_size * kLimbs, 0);
  out.row_sums.assign(m_size, 0.0f);
  out.factors.assign(m_size, 0.0f);
  at::parallel_for(0, m_size, 4, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* row = x + m * k_size;
      __m512 amax = _mm512_setzero_ps(), total = _mm512_setzero_ps();
      for (int64_t k = 0; k < k_size; k += 16) {
        const __m512 v = load16(row + k);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        total = _mm512_add_ps(total, v);
      }
      out.row_sums[m] = _mm512_reduce_add_ps(total);
      const float largest = _mm512_reduce_max_ps(amax);
      if (!std::isfinite(out.row_sums[m]) || !std::isfinite(largest)) {
        out.factors[m] = std::nanf("");  // inf or NaN in the row: its outputs are NaN
        continue;
      }
      if (!(largest > 0.0f)) continue;  // zero row: every limb and the factor 0, the output is the bias
      int exponent;
      std::frexp(largest, &exponent);  // largest = f·2^exponent, f in [0.5, 1): E = exponent − 1
      const int e = exponent - 1;
      out.factors[m] = std::ldexp(1.0f, e - 6);
      const __m512 to_limb0 = _mm512_set1_ps(std::ldexp(1.0f, 6 - e));
      const __m512 step = _mm512_set1_ps(128.0f);
      const __m512 low = _mm512_set1_ps(-127.0f), high = _mm512_set1_ps(127.0f);
      int8_t* limbs = out.limbs.data() + m * kLimbs * k_size;
      __m512i sum[kLimbs];
      for (int j = 0; j < kLimbs; ++j) sum[j] = _mm512_setzero_si512();
      for (int64_t k = 0; k < k_size; k += 16) {
        __m512 r = _mm512_mul_ps(load16(row + k), to_limb0);  // |r| < 128, exact
        for (int j = 0; j < kLimbs; ++j) {
          __m512 a;
          if (j + 1 < kLimbs) {
            a = _mm512_roundscale_ps(r, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            r = _mm512_mul_ps(_mm512_sub_ps(r, a), step);
          } else {
            a = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), low),
                              high);
          }
          const __m512i ai = _mm512_cvtps_epi32(a);
          sum[j] = _mm512_add_epi32(sum[j], ai);
          alignas(16) int8_t bytes[16];
          _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtsepi32_epi8(ai));
          for (int b = 0; b < 4; ++b) {  // k + 4b .. k + 4b + 3: block (k / 4 + b), limb j
            std::memcpy(limbs + (k / kBlockK + b) * kLimbs * kBlockK + j * kBlockK, bytes + 4 * b, 4);
          }
        }
      }
      for (int j = 0; j < kLimbs; ++j) out.sums[m * kLimbs + j] = _mm512_reduce_add_epi32(sum[j]);
    }
  });
}

// R rows × one tile: four int32 sums per row (one per limb) for each of U consecutive blocks, so that
// at one or two rows eight independent vpdpbusd chains hide the instruction's latency; then the epilogue.
template <int R, typename T>
void tile_rows(const RowLimbs& x, int64_t m0, int64_t k_size, const uint8_t* tile, const float* scale,
               const float* zero, const float* bias, int64_t n0, T* y, int64_t n_size) {
  constexpr int U = R <= 2 ? 2 : 1;
  __m512i acc[U][R][kLimbs];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kLimbs; ++j) acc[u][r][j] = _mm512_setzero_si512();
  const int8_t* limbs = x.limbs.data() + m0 * kLimbs * k_size;
  const int64_t blocks = k_size / kBlockK;  // a multiple of U (K % 16 == 0)
  for (int64_t kq = 0; kq < blocks; kq += U) {
    _mm_prefetch(reinterpret_cast<const char*>(tile + (kq + kPrefetchBlocks) * kBlockBytes), _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const __m512i w = _mm512_loadu_si512(tile + (kq + u) * kBlockBytes);
      for (int r = 0; r < R; ++r) {
        for (int j = 0; j < kLimbs; ++j) {
          int32_t quad;
          std::memcpy(&quad, limbs + r * kLimbs * k_size + ((kq + u) * kLimbs + j) * kBlockK, 4);
          acc[u][r][j] = _mm512_dpbusd_epi32(acc[u][r][j], w, _mm512_set1_epi32(quad));
        }
      }
    }
  }
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kLimbs; ++j) acc[0][r][j] = _mm512_add_epi32(acc[0][r][j], acc[u][r][j]);
  const __m512 s = _mm512_loadu_ps(scale + n0);
  const __m512 z = zero != nullptr ? _mm512_loadu_ps(zero + n0) : _mm512_setzero_ps();
  const __m512 b = bias != nullptr ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  for (int r = 0; r < R; ++r) {
    const int64_t m = m0 + r;
    __m512 v = _mm512_setzero_ps();
    for (int j = kLimbs - 1; j >= 0; --j) {  // smallest limb first; 2^−7j scaling is exact
      const __m512i exact = _mm512_sub_epi32(acc[0][r][j], _mm512_set1_epi32(128 * x.sums[m * kLimbs + j]));
      v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(std::ldexp(1.0f, -7 * j))));
    }
    v = _mm512_mul_ps(v, _mm512_set1_ps(x.factors[m]));
    if (zero != nullptr) v = _mm512_sub_ps(v, _mm512_mul_ps(z, _mm512_set1_ps(x.row_sums[m])));
    v = _mm512_mul_ps(v, s);
    if (bias != nullptr) v = _mm512_add_ps(v, b);
    store16(y + r * n_size + n0, v);
  }
}

// Rows [first, first + count) of x × one tile (output channels n0 .. n0 + 15): y points at row 0 of
// the [rows, N] output; scale, zero and bias at channel 0 of this weight.
template <typename T>
void rows_of_tile(const RowLimbs& x, int64_t first, int64_t count, int64_t k_size, const uint8_t* tile,
                  const float* scale, const float* zero, const float* bias, int64_t n0, T* y, int64_t n_size) {
  for (int64_t m0 = first; m0 < first + count; m0 += kMaxRows) {
    T* out = y + m0 * n_size;
    switch (std::min<int64_t>(kMaxRows, first + count - m0)) {
      case 1: tile_rows<1, T>(x, m0, k_size, tile, scale, zero, bias, n0, out, n_size); break;
      case 2: tile_rows<2, T>(x, m0, k_size, tile, scale, zero, bias, n0, out, n_size); break;
      case 3: tile_rows<3, T>(x, m0, k_size, tile, scale, zero, bias, n0, out, n_size); break;
      default: tile_rows<4, T>(x, m0, k_size, tile, scale, zero, bias, n0, out, n_size); break;
    }
  }
}

template <typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                 const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m_size = x.size(0), k_size = x.size(1), n_size = w.size(0) * kTileN;
  RowLimbs limbs;
  split_rows(x.data_ptr<T>(), m_size, k_size, limbs);
  const uint8_t* w_ptr = w.data_ptr<uint8_t>();
  const float* s_ptr = scale.data_ptr<float>();
  const float* z_ptr = zero.has_value() ? zero->data_ptr<float>() : nullptr;
  const float* b_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* y_ptr = y.data_ptr<T>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  at::parallel_for(0, w.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      rows_of_tile(limbs, 0, m_size, k_size, w_ptr + tile * tile_bytes, s_ptr, z_ptr, b_ptr, tile * kTileN, y_ptr,
                   n_size);
    }
  });
}

// One GEMM per active expert over its rows (grouped contiguously), parallel over (expert, tile): float32
// (Σ − z·Σx)·s into out [rows, N]. w uint8 [E, N/16, K/4, 64]; scale and zero float32 [E, N] (zero or null).
void grouped_gemm(const vllm_modelslim::ExpertGroups& groups, const uint8_t* w, const float* scale, const float* zero,
                  int64_t k_size, int64_t n_size, const RowLimbs& x, float* out) {
  const int64_t tiles = n_size / kTileN, tile_bytes = k_size / kBlockK * kBlockBytes;
  groups.parallel_for_tiles(tiles, [&](int64_t e, int64_t tile, int64_t first, int64_t count) {
    rows_of_tile(x, first, count, k_size, w + (e * tiles + tile) * tile_bytes, scale + e * n_size,
                 zero != nullptr ? zero + e * n_size : nullptr, nullptr, tile * kTileN, out, n_size);
  });
}

// The rows of `from` copied to rows `position[p]` of a new set: the row p of token p / top_k.
RowLimbs gather_rows(const RowLimbs& from, const std::vector<int64_t>& position, int64_t top_k, int64_t k_size) {
  const int64_t pairs = static_cast<int64_t>(position.size()), row_bytes = kLimbs * k_size;
  RowLimbs out;
  out.limbs.resize(pairs * row_bytes);
  out.sums.resize(pairs * kLimbs);
  out.row_sums.resize(pairs);
  out.factors.resize(pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t t = p / top_k, row = position[p];
    std::memcpy(out.limbs.data() + row * row_bytes, from.limbs.data() + t * row_bytes, row_bytes);
    std::memcpy(out.sums.data() + row * kLimbs, from.sums.data() + t * kLimbs, kLimbs * sizeof(int32_t));
    out.row_sums[row] = from.row_sums[t];
    out.factors[row] = from.factors[t];
  }
  return out;
}

void check_weight(const at::Tensor& weight, int64_t k_size) {
  vllm_modelslim::check_packed_weight(weight, k_size, kBlockK, "the contiguous packed uint8 [N/16, K/4, 64] int8 weight");
}

// Groups of kUnpackTiles tiles: each k row of a group is 64 (bf16) or 128 (float32) contiguous bytes,
// written while in cache (one tile at a time wrote half cache lines, K rows apart).
constexpr int64_t kUnpackTiles = 4;

template <typename T>
void unpack_impl(const uint8_t* w, int64_t k_size, int64_t col_start, int64_t col_stop, T* out) {
  const int64_t cols = col_stop - col_start, tile_bytes = k_size / kBlockK * kBlockBytes;
  const int64_t first = col_start / kTileN, tiles = (col_stop - col_start) / kTileN;
  const int64_t groups = (tiles + kUnpackTiles - 1) / kUnpackTiles;
  const __m512i byte = _mm512_set1_epi32(0xFF), offset = _mm512_set1_epi32(128);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t g0 = group * kUnpackTiles, g1 = std::min(tiles, g0 + kUnpackTiles);
      for (int64_t kq = 0; kq < k_size / kBlockK; ++kq) {
        for (int64_t tile = g0; tile < g1; ++tile) {
          const __m512i v = _mm512_loadu_si512(w + (first + tile) * tile_bytes + kq * kBlockBytes);
          T* column = out + tile * kTileN;
          for (int t = 0; t < kBlockK; ++t) {
            const __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(v, 8 * t), byte), offset);
            store16(column + (kq * kBlockK + t) * cols, _mm512_cvtepi32_ps(q));  // exact in bf16 too
          }
        }
      }
    }
  });
}

}  // namespace

// x [M, K] bf16 or float32 contiguous (K % 16 == 0); weight uint8 [N/16, K/4, 64]; scale float32 [N];
// zero_point and bias float32 [N] or None. Returns [M, N] in x's dtype.
at::Tensor int8_weight_vnni_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                   const c10::optional<at::Tensor>& zero_point,
                                   const c10::optional<at::Tensor>& bias) {
  vllm_modelslim::check_activation_rows(x);
  check_weight(weight, x.size(1));
  const int64_t n_size = weight.size(0) * kTileN;
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

// q (exact) of output channels [col_start, col_stop) (whole tiles) as Wᵀ, into out: bf16 or float32
// [K, col_stop − col_start], contiguous.
void int8_weight_vnni_unpack(const at::Tensor& weight, int64_t col_start, int64_t col_stop, const at::Tensor& out) {
  const int64_t k_size = weight.size(1) * kBlockK;
  check_weight(weight, k_size);
  TORCH_CHECK(col_start % kTileN == 0 && col_stop % kTileN == 0 && 0 <= col_start && col_start < col_stop &&
                  col_stop <= weight.size(0) * kTileN,
              "columns must be whole 16-channel tiles within N");
  TORCH_CHECK(out.is_contiguous() && out.numel() == k_size * (col_stop - col_start) &&
                  (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat),
              "out must be a contiguous bf16 or float32 buffer of K × columns elements");
  if (out.scalar_type() == at::kBFloat16) {
    unpack_impl(weight.data_ptr<uint8_t>(), k_size, col_start, col_stop, out.data_ptr<at::BFloat16>());
  } else {
    unpack_impl(weight.data_ptr<uint8_t>(), k_size, col_start, col_stop, out.data_ptr<float>());
  }
}

// A MoE layer of W8A16 SwiGLU experts in one call, per routed (token t, slot j), expert e = topk_ids[t, j]:
//   C = x[t]·W13_eᵀ (W = (q − z)·s per channel) [2I], float32 (the few-rows limb products above)
//   S = silu(C[:I])·C[I:], rounded once to bf16
//   D = S·W2_eᵀ [H], float32
//   y[t] = Σ_j topk_weights[t, j]·D_j (slots in order), float32, rounded once to bf16.
// Each token is split into limbs once for all its experts, its rows are grouped by expert, and one
// GEMM per active expert and projection runs over that expert's rows.
// x bf16 [T, H] contiguous; w13 uint8 [E, 2I/16, H/4, 64], w2 uint8 [E, H/16, I/4, 64] (q + 128);
// scales and zero points float32 [E, 2I] / [E, H] (zero points or None); topk_weights float32 and
// topk_ids int64 [T, top_k]; H and I multiples of 16. Returns bf16 [T, H].
at::Tensor int8_weight_vnni_moe(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w13_scale,
                                const c10::optional<at::Tensor>& w13_zero, const at::Tensor& w2,
                                const at::Tensor& w2_scale, const c10::optional<at::Tensor>& w2_zero,
                                const at::Tensor& topk_weights, const at::Tensor& topk_ids) {
  vllm_modelslim::check_activation_rows(x);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "x must be bf16");
  const int64_t tokens = x.size(0), hidden = x.size(1);
  TORCH_CHECK(w13.dim() == 4 && w2.dim() == 4 && w13.size(0) == w2.size(0) && w13.is_contiguous() &&
                  w2.is_contiguous(),
              "w13 and w2 must be contiguous [E, N/16, K/4, 64] tensors of the same E");
  const int64_t experts = w13.size(0), inter2 = w13.size(1) * kTileN, inter = inter2 / 2;
  TORCH_CHECK(inter % 16 == 0 && w2.size(1) * kTileN == hidden, "the intermediate size must be a multiple of 16");
  vllm_modelslim::check_packed_weight(w13.view({experts * w13.size(1), w13.size(2), w13.size(3)}), hidden, kBlockK,
                                      "the packed uint8 [E, 2I/16, H/4, 64] int8 experts", "w13");
  vllm_modelslim::check_packed_weight(w2.view({experts * w2.size(1), w2.size(2), w2.size(3)}), inter, kBlockK,
                                      "the packed uint8 [E, H/16, I/4, 64] int8 experts", "w2");
  vllm_modelslim::check_channel_vector(w13_scale, experts * inter2, "w13_scale");
  vllm_modelslim::check_channel_vector(w13_zero, experts * inter2, "w13_zero");
  vllm_modelslim::check_channel_vector(w2_scale, experts * hidden, "w2_scale");
  vllm_modelslim::check_channel_vector(w2_zero, experts * hidden, "w2_zero");
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.size(0) == tokens && topk_ids.scalar_type() == at::kLong &&
                  topk_ids.is_contiguous(),
              "topk_ids must be a contiguous int64 [T, top_k] tensor");
  TORCH_CHECK(topk_weights.sizes() == topk_ids.sizes() && topk_weights.scalar_type() == at::kFloat &&
                  topk_weights.is_contiguous(),
              "topk_weights must be a contiguous float32 [T, top_k] tensor");
  auto y = at::empty({tokens, hidden}, x.options());
  const int64_t top_k = topk_ids.size(1), pairs = tokens * top_k;
  if (pairs == 0) return y.zero_();
  const vllm_modelslim::ExpertGroups groups(topk_ids.data_ptr<int64_t>(), pairs, experts);
  RowLimbs x_limbs;
  split_rows(x.data_ptr<at::BFloat16>(), tokens, hidden, x_limbs);
  const RowLimbs gathered = gather_rows(x_limbs, groups.position, top_k, hidden);
  auto c = at::empty({pairs, inter2}, x.options().dtype(at::kFloat));
  float* c_ptr = c.data_ptr<float>();
  grouped_gemm(groups, w13.data_ptr<uint8_t>(), w13_scale.data_ptr<float>(),
               w13_zero.has_value() ? w13_zero->data_ptr<float>() : nullptr, hidden, inter2, gathered, c_ptr);
  auto s = at::empty({pairs, inter}, x.options());
  at::BFloat16* s_ptr = s.data_ptr<at::BFloat16>();
  at::parallel_for(0, pairs, 4, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      vllm_modelslim::swiglu_row(c_ptr + row * inter2, c_ptr + row * inter2 + inter, inter, s_ptr + row * inter);
    }
  });
  RowLimbs s_limbs;
  split_rows(s_ptr, pairs, inter, s_limbs);
  auto d = at::empty({pairs, hidden}, x.options().dtype(at::kFloat));
  float* d_ptr = d.data_ptr<float>();
  grouped_gemm(groups, w2.data_ptr<uint8_t>(), w2_scale.data_ptr<float>(),
               w2_zero.has_value() ? w2_zero->data_ptr<float>() : nullptr, inter, hidden, s_limbs, d_ptr);
  vllm_modelslim::combine_slots(d_ptr, groups, topk_weights.data_ptr<float>(), tokens, top_k, hidden,
                                y.data_ptr<at::BFloat16>());
  return y;
}

TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def("int8_weight_vnni_linear(Tensor x, Tensor weight, Tensor scale, Tensor? zero_point, Tensor? bias) -> Tensor");
  m.def("int8_weight_vnni_unpack(Tensor weight, int col_start, int col_stop, Tensor(a!) out) -> ()");
  m.def(
      "int8_weight_vnni_moe(Tensor x, Tensor w13, Tensor w13_scale, Tensor? w13_zero, Tensor w2, Tensor w2_scale, "
      "Tensor? w2_zero, Tensor topk_weights, Tensor topk_ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) {
  m.impl("int8_weight_vnni_linear", &int8_weight_vnni_linear);
  m.impl("int8_weight_vnni_unpack", &int8_weight_vnni_unpack);
  m.impl("int8_weight_vnni_moe", &int8_weight_vnni_moe);
}
