// Decode rows' attention straight over the paged KV cache (the torch backend's decode rows on the packed CPU path):
// for request b, out[b, h] = softmax(scale * q[b, h] . k[slot(b, t), h / G]) . v[slot(b, t), h / G] over
// t < lens[b], slot(b, t) = tables[b, t / block_size] * block_size + t % block_size, G = H / Hkv query heads per KV
// head. No padded gather of the contexts, and one C++ call a layer instead of SDPA's views, checks and dispatch
// (89 us a layer with them for one SmolLM2 token, most of it not arithmetic). (request, KV head) pairs split across
// torch's intra-op threads, each reading its K and V rows once for its G query heads; the softmax in float32, its
// exponentials 16 at a time (a scalar std::exp per score was most of a batched decode step's attention: 1.9 ms a
// layer for 30 rows of ~400 tokens, tests/cpu/bench_cpu_decode_attention.py). The cache holds float32 or float16
// (the packed path's default: half the bytes a decode step reads, and it is memory-bound), widened as it is read.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu_vector_exp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
// The lanes of a row of n floats from lane 16 * chunk on: all 16, or the tail's.
inline __mmask16 lanes(int64_t n, int64_t chunk) {
  const int64_t left = n - 16 * chunk;
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// 16 lanes of a cache row as float32 (masked lanes 0).
inline __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load(const at::Half* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const void*>(p))); }
#endif

template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t c = 0; 16 * c < n; ++c) {
    const __mmask16 m = lanes(n, c);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + 16 * c), load(b + 16 * c, m), acc);
  }
  return _mm512_reduce_add_ps(acc);
#else
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * static_cast<float>(b[i]);
  return s;
#endif
}

// p[0..L) <- softmax(p): in place.
inline void softmax(float* p, int64_t L) {
  const float peak = *std::max_element(p, p + L);
#if defined(__AVX512F__)
  const __m512 top = _mm512_set1_ps(peak);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; 16 * c < L; ++c) {
    const __mmask16 m = lanes(L, c);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + 16 * c), top));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
    _mm512_mask_storeu_ps(p + 16 * c, m, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (int64_t c = 0; 16 * c < L; ++c) {
    const __mmask16 m = lanes(L, c);
    _mm512_mask_storeu_ps(p + 16 * c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + 16 * c), inverse));
  }
#else
  float total = 0.f;
  for (int64_t t = 0; t < L; ++t) total += (p[t] = std::exp(p[t] - peak));
  for (int64_t t = 0; t < L; ++t) p[t] /= total;
#endif
}

// o[0..D) += w * v[0..D)
template <typename T>
inline void add_scaled(float* o, float w, const T* v, int64_t D) {
#if defined(__AVX512F__)
  const __m512 wv = _mm512_set1_ps(w);
  for (int64_t c = 0; 16 * c < D; ++c) {
    const __mmask16 m = lanes(D, c);
    const __m512 acc = _mm512_fmadd_ps(wv, load(v + 16 * c, m), _mm512_maskz_loadu_ps(m, o + 16 * c));
    _mm512_mask_storeu_ps(o + 16 * c, m, acc);
  }
#else
  for (int64_t d = 0; d < D; ++d) o[d] += w * static_cast<float>(v[d]);
#endif
}

// Rows are fetched this many positions ahead: a context's blocks lie anywhere in the cache, and a hardware
// prefetcher stops at every block. 24 against 8: 64 x 1,024 float16 2.58-2.77 -> 2.10 ms a layer, 32 x 400 the same
// (tests/cpu/bench_cpu_decode_attention.py, AMD EPYC, 2026-12-03). 48 and 96 were slower with the cache in memory.
constexpr int64_t kAhead = 24;

// Into L2 (T1), not L1, and the V rows during the scores' pass (below). With every layer's cache in memory, as in
// the engine, the two took 8-64 rows 16-26% faster, bit-equal (docs/results/2026-12-04b-cpu/decode_attention_ab.py,
// AMD EPYC, 2026-12-04: 32 x 344 0.64 -> 0.51 ms a layer, 64 x 1,024 3.38 -> 2.69); T1 alone gave about half.
// Each pair also fetches the next pair's first rows: 1-8% more at 8-64 rows (decode_attention_ab_next_pair.txt, there).
template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
#if defined(__AVX512F__)
  for (int64_t byte = 0; byte < D * static_cast<int64_t>(sizeof(T)); byte += 64)
    _mm_prefetch(reinterpret_cast<const char*>(row) + byte, _MM_HINT_T1);
#endif
}

#if defined(__AVX512F__)
// The sums of four vectors' lanes, in order: 128-bit quarters added pairwise across the four (two shuffle levels),
// then each quarter's four lanes (a _mm512_reduce_add_ps per vector took about half of the scores' instructions).
inline __m128 sum4(const __m512 v[4]) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x44), _mm512_shuffle_f32x4(v[0], v[1], 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x44), _mm512_shuffle_f32x4(v[2], v[3], 0xEE));
  __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));  // quarter j: v[j]
  s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(2, 3, 0, 1)));
  s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));  // every lane of quarter j: v[j]'s sum
  const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, s));
}

// One (request, KV head) pair for head size 16 * NC and G query heads a KV head, with the queries and the outputs
// in registers across the context (the general loop below keeps them in memory: about a third slower).
template <typename T, int G, int NC>
void attend_pair_in_registers(const float* q0, const T* kp, const T* vp, const int64_t* rows, int64_t L, float sc,
                              float* p, float* o0) {
  __m512 q[G][NC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) q[g][c] = _mm512_loadu_ps(q0 + g * 16 * NC + 16 * c);
  const __m128 scale4 = _mm_set1_ps(sc);
  int64_t t = 0;
  for (; t + 4 <= L; t += 4) {  // four positions' scores at once: one reduction tree for their four sums
    __m512 acc[G][4];
    for (int j = 0; j < 4; ++j) {
      // the V row too, so the pass after the softmax reads it from L2
      if (t + j + kAhead < L) {
        prefetch_row(kp + rows[t + j + kAhead], 16 * NC);
        prefetch_row(vp + rows[t + j + kAhead], 16 * NC);
      }
      __m512 k[NC];
      for (int c = 0; c < NC; ++c) k[c] = load(kp + rows[t + j] + 16 * c, static_cast<__mmask16>(0xFFFF));
      for (int g = 0; g < G; ++g) {
        acc[g][j] = _mm512_mul_ps(q[g][0], k[0]);
        for (int c = 1; c < NC; ++c) acc[g][j] = _mm512_fmadd_ps(q[g][c], k[c], acc[g][j]);
      }
    }
    for (int g = 0; g < G; ++g) _mm_storeu_ps(p + g * L + t, _mm_mul_ps(scale4, sum4(acc[g])));
  }
  for (; t < L; ++t) {
    __m512 k[NC];
    for (int c = 0; c < NC; ++c) k[c] = load(kp + rows[t] + 16 * c, static_cast<__mmask16>(0xFFFF));
    for (int g = 0; g < G; ++g) {
      __m512 acc = _mm512_mul_ps(q[g][0], k[0]);
      for (int c = 1; c < NC; ++c) acc = _mm512_fmadd_ps(q[g][c], k[c], acc);
      p[g * L + t] = sc * _mm512_reduce_add_ps(acc);
    }
  }
  for (int g = 0; g < G; ++g) softmax(p + g * L, L);
  __m512 acc[G][NC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < L; ++t) {
    if (t + kAhead < L) prefetch_row(vp + rows[t + kAhead], 16 * NC);
    __m512 v[NC];
    for (int c = 0; c < NC; ++c) v[c] = load(vp + rows[t] + 16 * c, static_cast<__mmask16>(0xFFFF));
    for (int g = 0; g < G; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * L + t]);
      for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_fmadd_ps(w, v[c], acc[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o0 + g * 16 * NC + 16 * c, acc[g][c]);
}

// The register version for this shape, or nullptr: head size 64 with up to 4 query heads a KV head (SmolLM2: 3),
// 128 with up to 2 (more would not fit the 32 vector registers).
template <typename T>
using PairFn = void (*)(const float*, const T*, const T*, const int64_t*, int64_t, float, float*, float*);

template <typename T>
PairFn<T> pair_in_registers(int64_t G, int64_t D) {
  if (D == 64 && G == 1) return attend_pair_in_registers<T, 1, 4>;
  if (D == 64 && G == 2) return attend_pair_in_registers<T, 2, 4>;
  if (D == 64 && G == 3) return attend_pair_in_registers<T, 3, 4>;
  if (D == 64 && G == 4) return attend_pair_in_registers<T, 4, 4>;
  if (D == 128 && G == 1) return attend_pair_in_registers<T, 1, 8>;
  if (D == 128 && G == 2) return attend_pair_in_registers<T, 2, 8>;
  return nullptr;
}
#endif

template <typename T>
void attend(const float* qp, const T* kp, const T* vp, float* op, const int32_t* tp, const int32_t* lp, int64_t B,
            int64_t H, int64_t Hkv, int64_t D, int64_t nb, int64_t block_size, float sc) {
  const int64_t G = H / Hkv;
#if defined(__AVX512F__)
  const PairFn<T> in_registers = pair_in_registers<T>(G, D);
#endif
  // one (request, KV head) pair at a time: its G query heads read each K and V row once
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    std::vector<int64_t> rows;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / Hkv, kv = i % Hkv, L = lp[b];
      p.resize(G * L);  // p[g * L + t]
      rows.resize(L);
      for (int64_t j = 0, t = 0; t < L; ++j)  // block by block: no division per position
        for (int64_t slot = static_cast<int64_t>(tp[b * nb + j]) * block_size, last = slot + block_size;
             slot < last && t < L; ++slot, ++t)
          rows[t] = (slot * Hkv + kv) * D;
      if (i + 1 < end) {  // the next pair's first rows, so its passes do not start on a miss
        const int64_t next_b = (i + 1) / Hkv, next_kv = (i + 1) % Hkv, first = std::min<int64_t>(kAhead, lp[next_b]);
        for (int64_t t = 0; t < first; ++t) {
          const int64_t s = static_cast<int64_t>(tp[next_b * nb + t / block_size]) * block_size + t % block_size;
          prefetch_row(kp + (s * Hkv + next_kv) * D, D);
          prefetch_row(vp + (s * Hkv + next_kv) * D, D);
        }
      }
      const float* q0 = qp + (b * H + kv * G) * D;  // the group's query heads, consecutive
      float* o0 = op + (b * H + kv * G) * D;
#if defined(__AVX512F__)
      if (in_registers != nullptr) {
        in_registers(q0, kp, vp, rows.data(), L, sc, p.data(), o0);
        continue;
      }
#endif
      for (int64_t t = 0; t < L; ++t) {
        const T* k = kp + rows[t];
        if (t + kAhead < L) {
          prefetch_row(kp + rows[t + kAhead], D);
          prefetch_row(vp + rows[t + kAhead], D);
        }
        for (int64_t g = 0; g < G; ++g) p[g * L + t] = sc * dot(q0 + g * D, k, D);
      }
      for (int64_t g = 0; g < G; ++g) softmax(p.data() + g * L, L);
      for (int64_t t = 0; t < L; ++t) {
        const T* v = vp + rows[t];
        if (t + kAhead < L) prefetch_row(vp + rows[t + kAhead], D);
        for (int64_t g = 0; g < G; ++g) add_scaled(o0 + g * D, p[g * L + t], v, D);
      }
    }
  });
}

}  // namespace

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& tables, const at::Tensor& lens, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q: float32 [B, H, D]");
  TORCH_CHECK(k_cache.dim() == 3 && k_cache.sizes() == v_cache.sizes() && (k_cache.scalar_type() == at::kFloat ||
              k_cache.scalar_type() == at::kHalf) && v_cache.scalar_type() == k_cache.scalar_type() &&
              k_cache.is_contiguous() && v_cache.is_contiguous() &&
              k_cache.size(2) == q.size(2) && q.size(1) % k_cache.size(1) == 0,
              "k_cache, v_cache: contiguous float32 or float16 [S, Hkv, D] with H a multiple of Hkv");
  TORCH_CHECK(tables.dim() == 2 && tables.scalar_type() == at::kInt && tables.is_contiguous() &&
              tables.size(0) == q.size(0) && lens.dim() == 1 && lens.scalar_type() == at::kInt &&
              lens.size(0) == q.size(0), "tables: int32 [B, blocks], lens: int32 [B]");
  const at::Tensor qc = q.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_cache.size(1);
  const int64_t nb = tables.size(1), cache_blocks = k_cache.size(0) / block_size;
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {  // every block a context uses lies in the cache, checked before the threads start
    TORCH_CHECK(lp[b] > 0 && lp[b] <= nb * block_size, "request ", b, ": context length ", lp[b],
                " outside its block table");
    for (int64_t j = 0; j < (lp[b] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(tp[b * nb + j] >= 0 && tp[b * nb + j] < cache_blocks, "cache block ", tp[b * nb + j],
                  " out of range");
  }
  at::Tensor out = at::zeros_like(qc);
  const float sc = static_cast<float>(scale);
  if (k_cache.scalar_type() == at::kHalf)
    attend(qc.data_ptr<float>(), k_cache.data_ptr<at::Half>(), v_cache.data_ptr<at::Half>(), out.data_ptr<float>(),
           tp, lp, B, H, Hkv, D, nb, block_size, sc);
  else
    attend(qc.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), out.data_ptr<float>(), tp,
           lp, B, H, Hkv, D, nb, block_size, sc);
  return out;
}
