// One query row's attention over a context laid out in place in the cache (the torch backend's lone request on
// the packed CPU path): out[h] = softmax(scale * q[h] . k[t, h / G]) . v[t, h / G] over t < L, G = H / Hkv query
// heads per KV head. One C++ call instead of SDPA's views, checks and dispatch (89 us a layer with them for one
// SmolLM2 token, most of it not arithmetic). Heads split across torch's intra-op threads; the softmax in float32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

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

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.size(0) == 1 && q.scalar_type() == at::kFloat, "q: float32 [1, H, D]");
  TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes() && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
              k.is_contiguous() && v.is_contiguous() && k.size(2) == q.size(2) && q.size(1) % k.size(1) == 0,
              "k, v: contiguous float32 [L, Hkv, D] with H a multiple of Hkv");
  const at::Tensor qc = q.contiguous();
  const int64_t H = q.size(1), D = q.size(2), L = k.size(0), Hkv = k.size(1), G = H / Hkv;
  at::Tensor out = at::empty_like(qc);
  const float* qp = qc.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(L);
    for (int64_t h = begin; h < end; ++h) {
      const int64_t kv = h / G;
      float peak = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < L; ++t) {
        p[t] = sc * dot(qp + h * D, kp + (t * Hkv + kv) * D, D);
        peak = std::max(peak, p[t]);
      }
      float total = 0.f;
      for (int64_t t = 0; t < L; ++t) total += (p[t] = std::exp(p[t] - peak));
      float* o = op + h * D;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      for (int64_t t = 0; t < L; ++t) {
        const float* vr = vp + (t * Hkv + kv) * D;
        const float w = p[t] / total;
        for (int64_t d = 0; d < D; ++d) o[d] += w * vr[d];
      }
    }
  });
  return out;
}
