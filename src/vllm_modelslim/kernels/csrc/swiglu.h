// SwiGLU of the fused MoE ops: S = silu(gate)·up in float32 lanes, rounded once to the output dtype.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "avx512_vectors.h"

namespace vllm_modelslim {

// e^x for float32 lanes: 2^n · p(r), n = round(x·log2 e), r = x − n·ln 2 (Cody–Waite split),
// p the degree-6 Taylor polynomial (|r| ≤ ln2/2: relative error about 2e-7).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// S = silu(gate) · up = gate / (1 + e^−gate) · up over I values, float32, stored as T.
template <typename T>
inline void swiglu_row(const float* gate, const float* up, int64_t size, T* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < size; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    store16(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
}

}  // namespace vllm_modelslim
