// Declarations of the CPU kernels' entry points (kernels/cpu_*.cpp), shared by the bindings and the decoder blocks.
// torch's extension cache hashes the .cpp sources only: a change here comes with the .cpp change that needs it.

#pragma once

#include <ATen/ATen.h>

#include <vector>

at::Tensor gguf_dot_matmul(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scale);
at::Tensor packed_linear(const at::Tensor& x, const std::vector<at::Tensor>& w, const c10::optional<at::Tensor>& bias);
void rotary_qk_(at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
                int64_t heads, int64_t head_dim);
std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const at::Tensor& weight, double eps);
std::vector<at::Tensor> attention_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                         const at::Tensor& norm_weight, double eps, const std::vector<at::Tensor>& qkv,
                                         const c10::optional<at::Tensor>& qkv_bias, const at::Tensor& positions,
                                         const at::Tensor& cos, const at::Tensor& sin, int64_t rotary_heads,
                                         int64_t head_dim);
std::vector<at::Tensor> attention_outputs(const at::Tensor& o, const at::Tensor& residual,
                                          const std::vector<at::Tensor>& o_proj, const c10::optional<at::Tensor>& o_bias,
                                          const at::Tensor& norm_weight, double eps,
                                          const std::vector<at::Tensor>& gate_up,
                                          const c10::optional<at::Tensor>& gate_up_bias,
                                          const std::vector<at::Tensor>& down, const c10::optional<at::Tensor>& down_bias);
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& tables, const at::Tensor& lens, int64_t block_size, double scale);
at::Tensor silu_and_mul_bf16(const at::Tensor& gate_up);
