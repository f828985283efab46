// Rotary position embedding (rotate-half layout) in place on the q and k heads of a fused qkv projection.
//
// qkv: float32 [T, W] rows whose first ``heads`` runs of head_dim values are the q and k heads; cos, sin:
// float32 [P, head_dim] tables; positions: int64 [T]. Each value is computed as the model's torch code does,
// x * cos + rotate_half(x) * sin with every multiply and the add rounded separately (built with
// -ffp-contract=off, so no fused multiply-add changes the rounding): the results are bit-equal.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

void rotary_qk_(at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
                int64_t heads, int64_t head_dim) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kFloat && qkv.stride(1) == 1, "qkv: float32 [T, W] rows");
  TORCH_CHECK(qkv.size(1) >= heads * head_dim && head_dim % 2 == 0, "qkv rows shorter than the rotated heads");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.numel() == qkv.size(0),
              "positions: int64 [T]");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kFloat &&
              sin.scalar_type() == at::kFloat && cos.size(1) == head_dim && sin.sizes() == cos.sizes(),
              "cos, sin: float32 [P, head_dim]");
  const int64_t T = qkv.size(0), ld = qkv.stride(0), half = head_dim / 2, P = cos.size(0);
  float* base = qkv.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(pos[t] >= 0 && pos[t] < P, "position ", pos[t], " beyond the table");
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  at::parallel_for(0, T, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> a(half), b(half);
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cp + pos[t] * head_dim;
      const float* s = sp + pos[t] * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* x = base + t * ld + h * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          a[j] = x[j] * c[j] + (-x[j + half]) * s[j];
          b[j] = x[j + half] * c[j + half] + x[j] * s[j + half];
        }
        for (int64_t j = 0; j < half; ++j) {
          x[j] = a[j];
          x[j + half] = b[j];
        }
      }
    }
  });
}
