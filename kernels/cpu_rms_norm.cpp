// RMSNorm of float32 rows, optionally adding a residual first, in one pass over each row: returns (normed, sum).
//
// x, residual: float32 [T, D] contiguous; weight: float32 [D]. normed = weight * (s / sqrt(mean(s^2) + eps)) with
// s = x + residual (or x). The mean's sum runs in another order than torch's reduction, so the result may differ
// from F.rms_norm in the last bits: the packed CPU path uses it, the exact float32 path keeps F.rms_norm.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// s = x + r (r may be null) written to sum, returning the sum of s^2.
float add_and_square_sum(const float* x, const float* r, float* sum, int64_t d) {
  int64_t j = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= d; j += 16) {
    __m512 s = _mm512_loadu_ps(x + j);
    if (r) s = _mm512_add_ps(s, _mm512_loadu_ps(r + j));
    _mm512_storeu_ps(sum + j, s);
    acc = _mm512_fmadd_ps(s, s, acc);
  }
  total = _mm512_reduce_add_ps(acc);
#endif
  for (; j < d; ++j) {
    const float s = r ? x[j] + r[j] : x[j];
    sum[j] = s;
    total += s * s;
  }
  return total;
}

}  // namespace

std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [T, D]");
  const int64_t T = x.size(0), D = x.size(1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == D,
              "weight: float32 [D]");
  const bool add = residual.has_value();
  if (add) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == at::kFloat && residual->is_contiguous(),
                "residual: like x");
  }
  at::Tensor normed = at::empty_like(x);
  at::Tensor sum = add ? at::empty_like(x) : x;
  const float* xp = x.data_ptr<float>();
  const float* rp = add ? residual->data_ptr<float>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  float* sp = add ? sum.data_ptr<float>() : nullptr;
  float* np_ = normed.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(add ? 0 : D);
    for (int64_t t = begin; t < end; ++t) {
      const float* row = xp + t * D;
      float* s = add ? sp + t * D : scratch.data();  // without a residual the sum is x itself: scratch holds it
      const float total = add_and_square_sum(row, add ? rp + t * D : nullptr, s, D);
      const float inv = 1.f / std::sqrt(total / static_cast<float>(D) + static_cast<float>(eps));
      float* out = np_ + t * D;
      for (int64_t j = 0; j < D; ++j) out[j] = wp[j] * (s[j] * inv);
    }
  });
  return {normed, sum};
}
