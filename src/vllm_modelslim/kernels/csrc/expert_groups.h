// Routing of the fused MoE ops: the (token, slot) pairs grouped by expert.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "avx512_vectors.h"

namespace vllm_modelslim {

// Pair p = t·top_k + j (token t, slot j) goes to row position[p] of its expert's contiguous group
// [offsets[e], offsets[e + 1]) (a counting sort, stable in token order); active lists the experts
// with at least one row, in order. Raises when an id is outside [0, experts).
struct ExpertGroups {
  std::vector<int64_t> offsets, position, active;

  ExpertGroups(const int64_t* ids, int64_t pairs, int64_t experts) : offsets(experts + 1, 0), position(pairs) {
    for (int64_t p = 0; p < pairs; ++p) {
      TORCH_CHECK(ids[p] >= 0 && ids[p] < experts, "expert id ", ids[p], " outside [0, ", experts, ")");
      ++offsets[ids[p] + 1];
    }
    for (int64_t e = 0; e < experts; ++e) {
      if (offsets[e + 1] > 0) active.push_back(e);
      offsets[e + 1] += offsets[e];
    }
    std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
    for (int64_t p = 0; p < pairs; ++p) position[p] = fill[ids[p]]++;
  }

  // fn(e, tile, first, count) for every active expert e and output tile in [0, tiles), in parallel:
  // the grouped GEMMs' work items (an expert's rows are [first, first + count)).
  template <typename Fn>
  void parallel_for_tiles(int64_t tiles, const Fn& fn) const {
    const int64_t items = static_cast<int64_t>(active.size()) * tiles;
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t e = active[item / tiles];
        fn(e, item % tiles, offsets[e], offsets[e + 1] - offsets[e]);
      }
    });
  }
};

// out[t] = Σ_j weights[t, j]·rows[position[t·top_k + j]] over the slots in order, float32, rounded
// once to T: rows float32 [pairs, hidden] (hidden % 16 == 0), weights float32 [tokens, top_k].
template <typename T>
void combine_slots(const float* rows, const ExpertGroups& groups, const float* weights, int64_t tokens,
                   int64_t top_k, int64_t hidden, T* out) {
  at::parallel_for(0, tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < hidden; h += 16) {
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < top_k; ++j) {
          const float* row = rows + groups.position[t * top_k + j] * hidden;
          sum = _mm512_add_ps(sum, _mm512_mul_ps(_mm512_set1_ps(weights[t * top_k + j]), _mm512_loadu_ps(row + h)));
        }
        store16(out + t * hidden + h, sum);
      }
    }
  });
}

}  // namespace vllm_modelslim
