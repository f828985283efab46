// The CPU kernels' Python bindings: one extension module for every kernels/cpu_*.cpp file (kernels/cpu_build.py).

#include <torch/extension.h>

#include "cpu_kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("gguf_dot_matmul", &gguf_dot_matmul,
             "x [M, K] @ 4- or 8-bit GGUF weights (dot layout, scales for N) [N, K]^T, integer products");
  module.def("packed_linear", &packed_linear,
             "x [M, K] @ a packed weight [dot_values, scales]^T (+ bias), by the dot kernel "
             "(cpu_decoder_blocks.cpp)");
  module.def("attention_inputs", &attention_inputs,
             "packed decoder layer before attention: (rotated qkv, x + residual) (cpu_decoder_blocks.cpp)");
  module.def("attention_outputs", &attention_outputs,
             "packed decoder layer after attention: (MLP output, o + residual) (cpu_decoder_blocks.cpp)");
  module.def("paged_decode_attention", &paged_decode_attention,
             "decode rows [B, H, D] attending over the paged KV cache by block table (cpu_decode_attention.cpp)");
  module.def("silu_and_mul_bf16", &silu_and_mul_bf16,
             "silu(gate) * up for bfloat16 rows [gate | up] -> bfloat16, in float32 (cpu_silu_and_mul.cpp)");
  module.def("rotary_qk_", &rotary_qk_, "rotate the first heads of every qkv row in place (rotate-half rotary)");
  module.def("add_rms_norm", &add_rms_norm, "(RMSNorm of x + residual, x + residual) for float32 rows",
             pybind11::arg("x"), pybind11::arg("residual"), pybind11::arg("weight"), pybind11::arg("eps"));
}
