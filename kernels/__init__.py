"""pegboard.kernels: Triton kernels for the GPU and C++ kernels for the CPU, each beside a plain-torch reference."""
