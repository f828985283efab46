"""The CPU kernels (kernels/cpu_*.cpp) as one C++ extension, built with torch's extension builder on first use.

The build (about half a minute to a minute on two cores) is cached on disk in ``TORCH_EXTENSIONS_DIR``
(default ~/.cache/torch_extensions) and reused while the sources and flags stay the same; a later load takes
well under a second. ``-march=native``: the build targets the machine it runs on (AVX-512 where it has it).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

logger = logging.getLogger("pegboard.kernels.cpu_build")

_DIR = Path(__file__).parent
SOURCES = ("cpu_gguf_matmul.cpp", "cpu_decoder_blocks.cpp", "cpu_decode_attention.cpp",
           "cpu_rotary.cpp", "cpu_rms_norm.cpp", "cpu_silu_and_mul.cpp", "cpu_bindings.cpp")


@functools.cache
def compiled_ops():
    """The extension module (every function kernels/cpu_bindings.cpp binds), built or loaded from the cache."""
    import torch
    from torch.utils.cpp_extension import load

    started = time.perf_counter()
    logger.info("loading the CPU kernels (built once, about half a minute, then cached in TORCH_EXTENSIONS_DIR)")
    # the name carries the instruction set, so a cache shared by other machines never hands this one a build it
    # cannot run
    name = f"pegboard_cpu_kernels_{torch.backends.cpu.get_cpu_capability().lower()}"
    module = load(name=name, sources=[str(_DIR / s) for s in SOURCES],
                  extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"],
                  extra_ldflags=["-fopenmp"], verbose=False)
    logger.info("CPU kernels ready in %.1f s", time.perf_counter() - started)
    return module
