"""Checkpoint tensors into a model: each name routed to its parameter (``packed_modules_mapping`` names the
checkpoint tensors that are shards of a packed parameter), each tensor copied by that parameter's own
``weight_loader``; then every linear layer's scheme converts its loaded weights."""

from __future__ import annotations

import contextlib
from typing import Hashable, Iterable, Mapping

import torch
from torch import nn

from pegboard.core.errors import UnsupportedModelError
from pegboard.core.linear import LinearBase
from pegboard.core.parallel import copy_part

# checkpoint module name -> (packed module name, shard id), e.g. "q_proj" -> ("qkv_proj", "q")
PackedModules = Mapping[str, tuple[str, Hashable]]


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: None = None) -> None:
    """Copy a whole checkpoint tensor into a parameter that is neither split nor packed (a norm's weight)."""
    copy_part(param.data, loaded_weight, {})


def route(name: str, packed_modules_mapping: PackedModules) -> tuple[str, Hashable]:
    """(parameter name, shard id) of a checkpoint name: a module named in the mapping becomes its packed one."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in packed_modules_mapping:
            parts[i], shard_id = packed_modules_mapping[part]
            return ".".join(parts), shard_id
    return name, None


def load_named_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                       packed_modules_mapping: PackedModules, *, prefix: str = "") -> None:
    """Load (name, tensor) pairs through the parameters' weight loaders; every parameter and shard must be filled."""
    params = dict(model.named_parameters())
    filled: dict[str, set[Hashable]] = {}
    for checkpoint_name, tensor in weights:
        name, shard_id = route(checkpoint_name.removeprefix(prefix), packed_modules_mapping)
        param = params.get(name)
        if param is None:
            raise UnsupportedModelError(
                f"checkpoint tensor {checkpoint_name!r} has no place in {type(model).__name__}")
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            if shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
        except ValueError as exc:
            raise UnsupportedModelError(f"checkpoint tensor {checkpoint_name!r} {exc}") from None
        filled.setdefault(name, set()).add(shard_id)
    missing = [name for name in params if name not in filled]
    missing += [f"{name} (shard {shard!r})" for name, shards in filled.items() if None not in shards
                for shard in _shard_ids(model, name) if shard not in shards]
    if missing:
        raise UnsupportedModelError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")


def _shard_ids(model: nn.Module, param_name: str) -> tuple[Hashable, ...]:
    module = model.get_submodule(param_name.rpartition(".")[0])
    return module.shard_ids if isinstance(module, LinearBase) else ()


def process_weights_after_loading(model: nn.Module) -> None:
    """Let each linear layer's scheme turn its loaded weights into their run-time form (once, after loading)."""
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.scheme.process_weights_after_loading(module)


@contextlib.contextmanager
def empty_parameters(dtype: torch.dtype):
    """Build modules in ``dtype`` without random initialisation (the loader fills every parameter)."""
    default_dtype = torch.get_default_dtype()
    saved = {cls: cls.reset_parameters for cls in (torch.nn.Linear, torch.nn.Embedding)}
    torch.set_default_dtype(dtype)
    for cls in saved:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        torch.set_default_dtype(default_dtype)
        for cls, reset in saved.items():
            cls.reset_parameters = reset
