// The packed CPU path's decoder layer in two calls around attention, so its products run back to back in C++
// (a product started slow after a pause: 30 Q4_1 layers' products measured 3.1 ms back to back and 5.4 ms with
// 60 us of other work between calls, with one thread as with two and whatever OpenMP's spin settings):
//   attention_inputs:  RMSNorm(x + residual) -> qkv projection -> rotary on the q and k heads, in place;
//   attention_outputs: o projection -> RMSNorm(o + residual) -> gate/up projection -> SiLU(gate) * up -> down.
// A weight is its packed tensors [dot_values, scales] (kernels/cpu_gguf_matmul.py's PackedGGUFWeight.tensors),
// multiplied by packed_linear, which packed_matmul calls too: through the integer kernel (cpu_gguf_matmul.cpp).

#include "cpu_kernels.h"

at::Tensor packed_linear(const at::Tensor& x, const std::vector<at::Tensor>& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.size() == 2, "a packed weight is [dot_values, scales]");
  at::Tensor y = gguf_dot_matmul(x, w[0], w[1]);
  if (bias.has_value()) y.add_(*bias);
  return y;
}

std::vector<at::Tensor> attention_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                         const at::Tensor& norm_weight, double eps, const std::vector<at::Tensor>& qkv,
                                         const c10::optional<at::Tensor>& qkv_bias, const at::Tensor& positions,
                                         const at::Tensor& cos, const at::Tensor& sin, int64_t rotary_heads,
                                         int64_t head_dim) {
  std::vector<at::Tensor> normed = add_rms_norm(x, residual, norm_weight, eps);  // (normed, x + residual)
  at::Tensor projected = packed_linear(normed[0], qkv, qkv_bias);
  rotary_qk_(projected, positions, cos, sin, rotary_heads, head_dim);
  return {projected, normed[1]};
}

std::vector<at::Tensor> attention_outputs(const at::Tensor& o, const at::Tensor& residual,
                                          const std::vector<at::Tensor>& o_proj, const c10::optional<at::Tensor>& o_bias,
                                          const at::Tensor& norm_weight, double eps,
                                          const std::vector<at::Tensor>& gate_up,
                                          const c10::optional<at::Tensor>& gate_up_bias,
                                          const std::vector<at::Tensor>& down, const c10::optional<at::Tensor>& down_bias) {
  at::Tensor h = packed_linear(o.contiguous(), o_proj, o_bias);
  std::vector<at::Tensor> normed = add_rms_norm(h, residual, norm_weight, eps);
  at::Tensor gu = packed_linear(normed[0], gate_up, gate_up_bias);
  const int64_t inter = gu.size(1) / 2;
  at::Tensor act = at::silu(gu.narrow(1, 0, inter)).mul_(gu.narrow(1, inter, inter));
  return {packed_linear(act, down, down_bias), normed[1]};
}
