"""Built-in plugin: the plain-torch paged-attention backend (the CPU path and the GPU reference)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl


def torch_attention_backend(*args, **kwargs):
    """Build a TorchAttentionBackend (torch imported only now)."""
    from pegboard.plugins.torch_attention_backend import TorchAttentionBackend

    return TorchAttentionBackend(*args, **kwargs)


@hookimpl
def register_attention_backends(register) -> None:
    register("torch", torch_attention_backend)
