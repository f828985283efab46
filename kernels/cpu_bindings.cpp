// The CPU kernels' Python bindings: one extension module for every kernels/cpu_*.cpp file (kernels/cpu_build.py).

#include <torch/extension.h>

at::Tensor q4_dot_matmul(const at::Tensor& x, const at::Tensor& nibbles, const at::Tensor& scale, const at::Tensor& min);
at::Tensor q8_dot_matmul(const at::Tensor& x, const at::Tensor& quants, const at::Tensor& scale);
at::Tensor q4_float_matmul(const at::Tensor& x, const at::Tensor& nibbles, const at::Tensor& scale,
                           const at::Tensor& min);
at::Tensor q8_float_matmul(const at::Tensor& x, const at::Tensor& quants, const at::Tensor& scale);
void rotary_qk_(at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
                int64_t heads, int64_t head_dim);
std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const at::Tensor& weight, double eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("q4_dot_matmul", &q4_dot_matmul, "x [M, K] @ 4-bit GGUF weights (dot layout) [N, K]^T, integer products");
  module.def("q8_dot_matmul", &q8_dot_matmul, "x [M, K] @ 8-bit GGUF weights (dot layout) [N, K]^T, integer products");
  module.def("q4_float_matmul", &q4_float_matmul, "x [M, K] @ 4-bit GGUF weights [N, K]^T, dequantized in registers");
  module.def("q8_float_matmul", &q8_float_matmul, "x [M, K] @ 8-bit GGUF weights [N, K]^T, dequantized in registers");
  module.def("rotary_qk_", &rotary_qk_, "rotate the first heads of every qkv row in place (rotate-half rotary)");
  module.def("add_rms_norm", &add_rms_norm, "(RMSNorm of x + residual, x + residual) for float32 rows",
             pybind11::arg("x"), pybind11::arg("residual"), pybind11::arg("weight"), pybind11::arg("eps"));
}
