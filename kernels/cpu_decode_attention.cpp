// Decode rows' attention straight over the paged KV cache (the torch backend's decode rows on the packed CPU path):
// for request b, out[b, h] = softmax(scale * q[b, h] . k[slot(b, t), h / G]) . v[slot(b, t), h / G] over
// t < lens[b], slot(b, t) = tables[b, t / block_size] * block_size + t % block_size, G = H / Hkv query heads per KV
// head. No padded gather of the contexts, and one C++ call a layer instead of SDPA's views, checks and dispatch
// (89 us a layer with them for one SmolLM2 token, most of it not arithmetic). (request, KV head) pairs split across
// torch's intra-op threads, each reading its K and V rows once for its G query heads; the softmax in float32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& tables, const at::Tensor& lens, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q: float32 [B, H, D]");
  TORCH_CHECK(k_cache.dim() == 3 && k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == at::kFloat &&
              v_cache.scalar_type() == at::kFloat && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              k_cache.size(2) == q.size(2) && q.size(1) % k_cache.size(1) == 0,
              "k_cache, v_cache: contiguous float32 [S, Hkv, D] with H a multiple of Hkv");
  TORCH_CHECK(tables.dim() == 2 && tables.scalar_type() == at::kInt && tables.is_contiguous() &&
              tables.size(0) == q.size(0) && lens.dim() == 1 && lens.scalar_type() == at::kInt &&
              lens.size(0) == q.size(0), "tables: int32 [B, blocks], lens: int32 [B]");
  const at::Tensor qc = q.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_cache.size(1), G = H / Hkv;
  const int64_t nb = tables.size(1), slots = k_cache.size(0);
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(lp[b] > 0 && lp[b] <= nb * block_size, "request ", b, ": context length ", lp[b],
                " outside its block table");
  at::Tensor out = at::empty_like(qc);
  const float* qp = qc.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  // one (request, KV head) pair at a time: its G query heads read each K and V row once
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    std::vector<int64_t> rows;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / Hkv, kv = i % Hkv, L = lp[b];
      p.resize(G * L);  // p[g * L + t]
      rows.resize(L);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t slot = static_cast<int64_t>(tp[b * nb + t / block_size]) * block_size + t % block_size;
        TORCH_CHECK(slot >= 0 && slot < slots, "cache slot ", slot, " out of range");
        rows[t] = (slot * Hkv + kv) * D;
      }
      const float* q0 = qp + (b * H + kv * G) * D;  // the group's query heads, consecutive
      for (int64_t t = 0; t < L; ++t)
        for (int64_t g = 0; g < G; ++g) p[g * L + t] = sc * dot(q0 + g * D, kp + rows[t], D);
      for (int64_t g = 0; g < G; ++g) {
        float* pg = p.data() + g * L;
        const float peak = *std::max_element(pg, pg + L);
        float total = 0.f;
        for (int64_t t = 0; t < L; ++t) total += (pg[t] = std::exp(pg[t] - peak));
        for (int64_t t = 0; t < L; ++t) pg[t] /= total;
        float* o = op + (b * H + kv * G + g) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      }
      for (int64_t t = 0; t < L; ++t) {
        const float* vr = vp + rows[t];
        for (int64_t g = 0; g < G; ++g) {
          float* o = op + (b * H + kv * G + g) * D;
          const float w = p[g * L + t];
          for (int64_t d = 0; d < D; ++d) o[d] += w * vr[d];
        }
      }
    }
  });
  return out;
}
