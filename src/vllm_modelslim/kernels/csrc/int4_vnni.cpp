// The project's int4-weight CPU kernels on x86 AVX-512 VNNI: a dynamic linear layer and routed MoE experts.
//
// y[m, n] = float(Σ_k x_q[m, k]·q[n, k]) · s_x[m] · s_w[n] (+ bias[n]), with the
// per-token quantization x_q = clamp(round(x / s_x)), s_x = max_k |x[m, k]| / qmax
// (W4A8_DYNAMIC: qmax 127, W4A4_DYNAMIC: qmax 7) done here too, in the order and
// float32 operations of the project's torch quantizer and scaled-int8 GEMM
// epilogue, so the result is the same bits as that two-kernel path.
//
// MoE (int4_vnni_moe): each token quantized once, its rows grouped by expert, the gate/up GEMM in
// float32 (C = (x_q·W13ᵀ)·s_x·s13), S = silu(gate)·up in float32 rounded to the activation dtype and
// quantized per row, the down GEMM in float32 and the top-k combine in float32, rounded once.
//
// Weight layout (made by the Python side): uint8 [N/16, K/8, 16, 4]; byte
// (tile, kb, j, t) holds u = q + 8 of channel 16·tile + j at k = 8·kb + t in its
// low nibble and at k = 8·kb + 4 + t in its high nibble. One 64-byte block is
// then two VNNI operands (vpdpbusd: unsigned weight bytes times signed
// activation bytes, four k per int32 lane), and Σ u·x_q − 8·Σ x_q = Σ q·x_q.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "avx512_vectors.h"
#include "expert_groups.h"
#include "swiglu.h"

namespace {

constexpr int64_t kTileN = 16;   // output channels per tile: one zmm of int32 sums
constexpr int64_t kBlockK = 8;   // k per 64-byte weight block
constexpr int64_t kBlockBytes = 64;
constexpr int kMaxRows = 8;      // activation rows per register block
constexpr int64_t kPrefetchBlocks = 16;  // weight blocks (1 KiB) the loop prefetches ahead

using vllm_modelslim::load16;
using vllm_modelslim::store16;

// One row: s = max|x| / qmax (1 for a zero row), x_q = clamp(round_half_even(x / s), -qmax-1, qmax).
template <typename T>
void quantize_row(const T* x, int64_t k_size, float qmax, int8_t* q, int32_t* row_sum, float* scale_out) {
  __m512 amax = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_size; k += 16) {
    amax = _mm512_max_ps(amax, _mm512_abs_ps(load16(x + k)));
  }
  float scale = _mm512_reduce_max_ps(amax) / qmax;
  if (!(scale > 0.0f)) {
    scale = 1.0f;
  }
  const __m512 divisor = _mm512_set1_ps(scale);
  const __m512 low = _mm512_set1_ps(-qmax - 1.0f);
  const __m512 high = _mm512_set1_ps(qmax);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < k_size; k += 16) {
    __m512 v = _mm512_div_ps(load16(x + k), divisor);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, low), high);
    const __m512i qi = _mm512_cvtps_epi32(v);
    sum = _mm512_add_epi32(sum, qi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtsepi32_epi8(qi));
  }
  *row_sum = _mm512_reduce_add_epi32(sum);
  *scale_out = scale;
}

// Rows quantized per token: int8 values [rows, width], their int32 sums and float32 scales.
struct QuantizedRows {
  at::Tensor q, sums, scales;
  int8_t* q_ptr;
  int32_t* sums_ptr;
  float* scales_ptr;

  QuantizedRows(int64_t rows, int64_t width, const at::TensorOptions& opts)
      : q(at::empty({rows, width}, opts.dtype(at::kChar))),
        sums(at::empty({rows}, opts.dtype(at::kInt))),
        scales(at::empty({rows}, opts.dtype(at::kFloat))),
        q_ptr(q.data_ptr<int8_t>()),
        sums_ptr(sums.data_ptr<int32_t>()),
        scales_ptr(scales.data_ptr<float>()) {}
};

// quantize_row over every row of x [rows, width] into out, in parallel.
template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t width, float qmax, QuantizedRows& out) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      quantize_row(x + m * width, width, qmax, out.q_ptr + m * width, out.sums_ptr + m, out.scales_ptr + m);
    }
  });
}

// R rows x one 16-channel tile over all of K, then the float32 epilogue
// ((float(acc) · s_x) · s_w) + bias, stored as T. Separate int32 sums for the low and high
// nibbles, and for U consecutive weight blocks, keep 2·U independent vpdpbusd chains per row
// (one chain per row would wait on the instruction's latency at batch 1); integer sums are
// exact, so the order of the final additions does not matter.
template <int R, int U, typename T>
void tile_rows(const uint8_t* w_tile, int64_t k_size, const int8_t* xq, const int32_t* row_sums,
               const float* x_scales, const float* w_scale, const float* bias, T* y, int64_t n_size) {
  __m512i acc[U][2][R];
  for (int u = 0; u < U; ++u)
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < R; ++r) acc[u][h][r] = _mm512_setzero_si512();
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const int64_t blocks = k_size / kBlockK;  // a multiple of U (K % 16 == 0)
  for (int64_t kb = 0; kb < blocks; kb += U) {
    // Software prefetch kPrefetchBlocks ahead (past the tile's end: the next tile, contiguous).
    _mm_prefetch(reinterpret_cast<const char*>(w_tile + (kb + kPrefetchBlocks) * kBlockBytes), _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const __m512i v = _mm512_loadu_si512(w_tile + (kb + u) * kBlockBytes);
      const __m512i lo = _mm512_and_si512(v, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      for (int r = 0; r < R; ++r) {
        const int8_t* xr = xq + r * k_size + (kb + u) * kBlockK;
        int32_t first, second;
        std::memcpy(&first, xr, 4);
        std::memcpy(&second, xr + 4, 4);
        acc[u][0][r] = _mm512_dpbusd_epi32(acc[u][0][r], lo, _mm512_set1_epi32(first));
        acc[u][1][r] = _mm512_dpbusd_epi32(acc[u][1][r], hi, _mm512_set1_epi32(second));
      }
    }
  }
  const __m512 ws = _mm512_loadu_ps(w_scale);
  for (int r = 0; r < R; ++r) {
    __m512i sum = _mm512_add_epi32(acc[0][0][r], acc[0][1][r]);
    for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, _mm512_add_epi32(acc[u][0][r], acc[u][1][r]));
    const __m512i exact = _mm512_sub_epi32(sum, _mm512_set1_epi32(8 * row_sums[r]));
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(x_scales[r]));
    f = _mm512_mul_ps(f, ws);
    if (bias != nullptr) f = _mm512_add_ps(f, _mm512_loadu_ps(bias));
    store16(y + r * n_size, f);
  }
}

template <typename T>
void rows_of_tile(int rows, const uint8_t* w_tile, int64_t k_size, const int8_t* xq, const int32_t* row_sums,
                  const float* x_scales, const float* w_scale, const float* bias, T* y, int64_t n_size) {
  switch (rows) {
#define MODELSLIM_ROWS(R) \
  case R:                 \
    return tile_rows<R, (R <= 4 ? 2 : 1), T>(w_tile, k_size, xq, row_sums, x_scales, w_scale, bias, y, n_size);
    MODELSLIM_ROWS(1)
    MODELSLIM_ROWS(2)
    MODELSLIM_ROWS(3)
    MODELSLIM_ROWS(4)
    MODELSLIM_ROWS(5)
    MODELSLIM_ROWS(6)
    MODELSLIM_ROWS(7)
    MODELSLIM_ROWS(8)
#undef MODELSLIM_ROWS
    default:
      TORCH_CHECK(false, "rows per block must be 1..", kMaxRows);
  }
}

// One 16-channel tile over all rows of xq [rows, K] (blocks of up to kMaxRows rows): out [rows, N] at the
// tile's columns; w_scale, bias (or nullptr) and out already point at the tile's first channel.
template <typename T>
void tile_all_rows(const uint8_t* w_tile, int64_t k_size, const QuantizedRows& x, int64_t first, int64_t rows,
                   const float* w_scale, const float* bias, T* out, int64_t n_size) {
  for (int64_t m0 = 0; m0 < rows; m0 += kMaxRows) {
    const int r = static_cast<int>(std::min<int64_t>(kMaxRows, rows - m0));
    const int64_t m = first + m0;
    rows_of_tile<T>(r, w_tile, k_size, x.q_ptr + m * k_size, x.sums_ptr + m, x.scales_ptr + m, w_scale, bias,
                    out + m0 * n_size, n_size);
  }
}

template <typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                 const c10::optional<at::Tensor>& bias, double qmax, at::Tensor& y) {
  const int64_t m_size = x.size(0), k_size = x.size(1), n_size = y.size(1);
  QuantizedRows xq(m_size, k_size, x.options());
  quantize_rows(x.data_ptr<T>(), m_size, k_size, static_cast<float>(qmax), xq);
  const uint8_t* w_ptr = w_packed.data_ptr<uint8_t>();
  const float* ws_ptr = w_scale.data_ptr<float>();
  const float* b_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* y_ptr = y.data_ptr<T>();
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  at::parallel_for(0, n_size / kTileN, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTileN;
      tile_all_rows<T>(w_ptr + tile * tile_bytes, k_size, xq, 0, m_size, ws_ptr + n0,
                       b_ptr == nullptr ? nullptr : b_ptr + n0, y_ptr + n0, n_size);
    }
  });
}

// One GEMM per active expert over its rows of x (grouped contiguously), parallel over (expert, tile):
// float32 (acc·s_x)·s_w into out [rows, N].
void grouped_gemm(const vllm_modelslim::ExpertGroups& groups, const uint8_t* w, int64_t expert_bytes, const float* w_scale,
                  int64_t k_size, int64_t n_size, const QuantizedRows& x, float* out) {
  const int64_t tile_bytes = k_size / kBlockK * kBlockBytes;
  groups.parallel_for_tiles(n_size / kTileN, [&](int64_t e, int64_t tile, int64_t first, int64_t count) {
    const int64_t n0 = tile * kTileN;
    tile_all_rows<float>(w + e * expert_bytes + tile * tile_bytes, k_size, x, first, count,
                         w_scale + e * n_size + n0, nullptr, out + first * n_size + n0, n_size);
  });
}

template <typename T>
void moe_impl(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w13_scale, const at::Tensor& w2,
              const at::Tensor& w2_scale, const at::Tensor& topk_weights, const at::Tensor& topk_ids, float qmax,
              at::Tensor& y) {
  const int64_t tokens = x.size(0), hidden = x.size(1), top_k = topk_ids.size(1);
  const int64_t experts = w13.size(0), inter2 = w13.size(1) * kTileN, inter = inter2 / 2;
  const int64_t pairs = tokens * top_k;
  const vllm_modelslim::ExpertGroups groups(topk_ids.data_ptr<int64_t>(), pairs, experts);
  const std::vector<int64_t>& position = groups.position;
  // Each token quantized once; its rows copied to the slots of its experts.
  auto opts = x.options();
  QuantizedRows xq(tokens, hidden, opts);
  quantize_rows(x.data_ptr<T>(), tokens, hidden, qmax, xq);
  QuantizedRows gathered(pairs, hidden, opts);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t t = p / top_k, row = position[p];
    std::memcpy(gathered.q_ptr + row * hidden, xq.q_ptr + t * hidden, hidden);
    gathered.sums_ptr[row] = xq.sums_ptr[t];
    gathered.scales_ptr[row] = xq.scales_ptr[t];
  }
  // Gate and up: C = (x_q·W13ᵀ)·s_x·s13 in float32.
  auto c = at::empty({pairs, inter2}, opts.dtype(at::kFloat));
  float* c_ptr = c.data_ptr<float>();
  grouped_gemm(groups, w13.data_ptr<uint8_t>(), inter2 * hidden / 2, w13_scale.data_ptr<float>(), hidden,
               inter2, gathered, c_ptr);
  // S = silu(gate)·up rounded to the activation dtype, then quantized per row.
  auto s = at::empty({pairs, inter}, opts);
  T* s_ptr = s.data_ptr<T>();
  QuantizedRows sq(pairs, inter, opts);
  at::parallel_for(0, pairs, 4, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // each row quantized while it is in cache
      vllm_modelslim::swiglu_row(c_ptr + row * inter2, c_ptr + row * inter2 + inter, inter, s_ptr + row * inter);
      quantize_row(s_ptr + row * inter, inter, qmax, sq.q_ptr + row * inter, sq.sums_ptr + row,
                   sq.scales_ptr + row);
    }
  });
  // Down: D = (S_q·W2ᵀ)·s_S·s2 in float32, then out[t] = Σ_j w[t, j]·D[t, j] (slots in order), rounded once.
  auto d = at::empty({pairs, hidden}, opts.dtype(at::kFloat));
  float* d_ptr = d.data_ptr<float>();
  grouped_gemm(groups, w2.data_ptr<uint8_t>(), hidden * inter / 2, w2_scale.data_ptr<float>(), inter,
               hidden, sq, d_ptr);
  vllm_modelslim::combine_slots(d_ptr, groups, topk_weights.data_ptr<float>(), tokens, top_k, hidden,
                                y.data_ptr<T>());
}

}  // namespace

// x [M, K] bf16 or float32 contiguous; w_packed uint8 [N/16, K/8, 64]; w_scale float32 [N];
// bias float32 [N] or None; qmax 127 or 7. Returns [M, N] in x's dtype.
at::Tensor int4_vnni_linear(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                            const c10::optional<at::Tensor>& bias, double qmax) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [M, K] tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bf16 or float32");
  TORCH_CHECK(w_packed.dim() == 3 && w_packed.scalar_type() == at::kByte && w_packed.is_contiguous() &&
                  w_packed.size(2) == kBlockBytes,
              "w_packed must be a contiguous uint8 [N/16, K/8, 64] tensor");
  const int64_t k_size = x.size(1), n_size = w_packed.size(0) * kTileN;
  TORCH_CHECK(k_size % 16 == 0 && w_packed.size(1) * kBlockK == k_size, "K of x and w_packed differ");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n_size,
              "w_scale must be a contiguous float32 [N] tensor");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n_size,
                "bias must be a contiguous float32 [N] tensor");
  }
  auto y = at::empty({x.size(0), n_size}, x.options());
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    linear_impl<at::BFloat16>(x, w_packed, w_scale, bias, qmax, y);
  } else {
    linear_impl<float>(x, w_packed, w_scale, bias, qmax, y);
  }
  return y;
}


// x [T, H] bf16 or float32; w13 uint8 [E, 2I/16, H/8, 64] (gate rows then up rows), w13_scale float32
// [E, 2I]; w2 uint8 [E, H/16, I/8, 64], w2_scale float32 [E, H]; topk_weights float32 [T, k]; topk_ids
// int64 [T, k]. Returns [T, H] in x's dtype.
at::Tensor int4_vnni_moe(const at::Tensor& x, const at::Tensor& w13, const at::Tensor& w13_scale,
                         const at::Tensor& w2, const at::Tensor& w2_scale, const at::Tensor& topk_weights,
                         const at::Tensor& topk_ids, double qmax) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [T, H] tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bf16 or float32");
  const int64_t hidden = x.size(1), experts = w13.size(0);
  TORCH_CHECK(w13.dim() == 4 && w13.scalar_type() == at::kByte && w13.is_contiguous() && w13.size(3) == kBlockBytes &&
                  w13.size(2) * kBlockK == hidden && (w13.size(1) * kTileN) % 32 == 0,
              "w13 must be a contiguous uint8 [E, 2I/16, H/8, 64] tensor with I % 16 == 0");
  const int64_t inter = w13.size(1) * kTileN / 2;
  TORCH_CHECK(w2.dim() == 4 && w2.scalar_type() == at::kByte && w2.is_contiguous() && w2.size(0) == experts &&
                  w2.size(1) * kTileN == hidden && w2.size(2) * kBlockK == inter && w2.size(3) == kBlockBytes,
              "w2 must be a contiguous uint8 [E, H/16, I/8, 64] tensor");
  TORCH_CHECK(hidden % 16 == 0, "H must be a multiple of 16");
  TORCH_CHECK(w13_scale.scalar_type() == at::kFloat && w13_scale.is_contiguous() &&
                  w13_scale.numel() == experts * 2 * inter,
              "w13_scale must be a contiguous float32 [E, 2I] tensor");
  TORCH_CHECK(w2_scale.scalar_type() == at::kFloat && w2_scale.is_contiguous() && w2_scale.numel() == experts * hidden,
              "w2_scale must be a contiguous float32 [E, H] tensor");
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.size(0) == x.size(0) && topk_ids.scalar_type() == at::kLong &&
                  topk_ids.is_contiguous(),
              "topk_ids must be a contiguous int64 [T, k] tensor");
  TORCH_CHECK(topk_weights.sizes() == topk_ids.sizes() && topk_weights.scalar_type() == at::kFloat &&
                  topk_weights.is_contiguous(),
              "topk_weights must be a contiguous float32 tensor shaped as topk_ids");
  auto y = at::empty_like(x);
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    moe_impl<at::BFloat16>(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, static_cast<float>(qmax), y);
  } else {
    moe_impl<float>(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, static_cast<float>(qmax), y);
  }
  return y;
}

// Registered with torch's dispatcher (torch.ops.vllm_modelslim.*): called from C++ without a Python
// frame, in eager mode and from compiled graphs (the fake implementations are registered in Python).
TORCH_LIBRARY_FRAGMENT(vllm_modelslim, m) {
  m.def("int4_vnni_linear(Tensor x, Tensor weight_packed, Tensor weight_scale, Tensor? bias, float qmax) -> Tensor");
  m.def(
      "int4_vnni_moe(Tensor x, Tensor w13_packed, Tensor w13_scale, Tensor w2_packed, Tensor w2_scale, "
      "Tensor topk_weights, Tensor topk_ids, float qmax) -> Tensor");
}

TORCH_LIBRARY_IMPL(vllm_modelslim, CPU, m) {
  m.impl("int4_vnni_linear", &int4_vnni_linear);
  m.impl("int4_vnni_moe", &int4_vnni_moe);
}
