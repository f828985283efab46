"""Built-in plugin: the Triton PagedAttention backend (chosen automatically on CUDA)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl


def triton_attention_backend(*args, **kwargs):
    """Build a TritonAttentionBackend (torch and triton imported only now)."""
    from pegboard.plugins.triton_attention_backend import TritonAttentionBackend

    return TritonAttentionBackend(*args, **kwargs)


@hookimpl
def register_attention_backends(register) -> None:
    register("triton", triton_attention_backend)
