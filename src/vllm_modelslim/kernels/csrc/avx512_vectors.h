// Shared AVX-512 helpers of the project's CPU kernels: 16-lane float32 loads and stores of bf16 and
// float32 tensors (the bf16 conversion rounded as torch rounds it).
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

namespace vllm_modelslim {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }

// float32 -> bf16 bits in the low half of each 32-bit lane, rounded to nearest even (torch's
// conversion); NaN becomes a quiet NaN.
inline __m512i bf16_bits(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  const __m512i half = _mm512_srli_epi32(bits, 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(half, nan, _mm512_set1_epi32(0x7FC0));
}

inline void store16(at::BFloat16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
}

}  // namespace vllm_modelslim
