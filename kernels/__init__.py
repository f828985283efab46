"""pegboard.kernels: Triton kernels, each beside a plain-torch reference."""
