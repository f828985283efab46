"""The board: loads plugins (built-in, entry points, --plugin, PEGBOARD_PLUGINS) and fills registries."""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Callable, Iterable

import pluggy

from pegboard.core import hookspecs
from pegboard.core.commands import AddArguments, Command, Run
from pegboard.core.errors import PluginError, PluginLoadError
from pegboard.core.interfaces import INSTANCE_FAMILIES, interface, require

logger = logging.getLogger("pegboard.plugins")

ENTRY_POINT_GROUP = "pegboard"
PLUGINS_ENV = "PEGBOARD_PLUGINS"
STRICT_ENV = "PEGBOARD_STRICT_PLUGINS"

# Built-in plugins load through the same path as third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "pegboard.plugins.sources",
    "pegboard.plugins.loader_safetensors",
    "pegboard.plugins.loader_gguf",
    "pegboard.plugins.loader_dummy",
    "pegboard.plugins.llama",
    "pegboard.plugins.unquantized",
    "pegboard.plugins.torch_attention",
    "pegboard.plugins.triton_attention",
    "pegboard.plugins.default_sampler",
    "pegboard.plugins.plain_block_allocator",
    "pegboard.plugins.prefix_caching_allocator",
    "pegboard.plugins.uniproc_executor",
    "pegboard.plugins.ngram_proposer",
    "pegboard.plugins.structured_outputs",
    "pegboard.plugins.xgrammar_backend",
    "pegboard.plugins.llguidance_backend",
    "pegboard.plugins.hermes_tool_parser",
    "pegboard.plugins.prometheus_metrics",
    "pegboard.plugins.stats_logger",
    "pegboard.plugins.plugins_command",
    "pegboard.plugins.generate_command",
    "pegboard.plugins.serve_command",
    "pegboard.plugins.bench",
)

# Registry family -> the discovery hook that fills it.
FAMILIES: dict[str, str] = {
    "model_sources": "register_model_sources",
    "model_loaders": "register_model_loaders",
    "model_architectures": "register_model_architectures",
    "quantization_schemes": "register_quantization_schemes",
    "attention_backends": "register_attention_backends",
    "samplers": "register_samplers",
    "logits_processors": "register_logits_processors",
    "grammars": "register_grammars",
    "tool_parsers": "register_tool_parsers",
    "proposers": "register_proposers",
    "block_allocators": "register_block_allocators",
    "executors": "register_executors",
    "commands": "register_commands",
}


class Registry:
    """Named objects of one hook family; rejects duplicate names and remembers who registered what."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, Any] = {}
        self.owners: dict[str, str] = {}

    def register(self, name: str, obj: Any, *, owner: str = "?") -> None:
        """Add ``obj`` under ``name``; a name taken by another plugin is an error."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner!r} registered a {self.family} entry without a name")
        if name in self._items:
            raise PluginError(
                f"plugin {owner!r} registered {self.family} {name!r}, "
                f"which plugin {self.owners[name]!r} already registered"
            )
        if self.family in INSTANCE_FAMILIES:  # the entry is the object the engine calls: checked now
            require(obj, interface(self.family), kind=self.kind, name=name, owner=owner)
        self._items[name] = obj
        self.owners[name] = owner

    @property
    def kind(self) -> str:
        """What one entry is, in words: ``model_sources`` -> ``model source``."""
        return self.family.replace("_", " ")[:-1]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory named ``name`` and check what it built against the family's interface."""
        obj = self.get(name)(*args, **kwargs)
        require(obj, interface(self.family), kind=self.kind, name=name, owner=self.owners[name])
        return obj

    def callback(self, owner: str) -> Callable[..., None]:
        """The ``register(name, obj)`` function that one plugin's discovery hook receives."""

        def register(name: str, obj: Any) -> None:
            self.register(name, obj, owner=owner)

        return register

    def remove_owner(self, owner: str) -> None:
        """Forget everything one plugin registered."""
        for name in [n for n, o in self.owners.items() if o == owner]:
            del self._items[name], self.owners[name]

    def get(self, name: str) -> Any:
        """The object named ``name``, or a PluginError listing what is available."""
        try:
            return self._items[name]
        except KeyError:
            available = ", ".join(sorted(self._items)) or "none"
            raise PluginError(
                f"no {self.family.replace('_', ' ')} named {name!r} is registered "
                f"(available: {available}); is the plugin that provides it loaded?"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


class CommandRegistry(Registry):
    """The ``pegboard`` subcommands: ``register(name, add_arguments, run, help=...)`` files a Command."""

    def callback(self, owner: str) -> Callable[..., None]:
        def register(name: str, add_arguments: AddArguments, run: Run, *, help: str = "") -> None:
            self.register(name, Command(name, add_arguments, run, help), owner=owner)

        return register

    def register(self, name: str, obj: Any, *, owner: str = "?") -> None:
        """Add a command; a name that is also the group of another command (``bench``, ``bench serve``) is an error."""
        words = name.split()
        for other in self._items:
            shorter = min(len(words), len(other.split()))
            if other != name and words[:shorter] == other.split()[:shorter]:
                raise PluginError(f"plugin {owner!r} registered commands {name!r}, which clashes with {other!r} of "
                                  f"plugin {self.owners[other]!r}: a command cannot also be a group of commands")
        super().register(name, obj, owner=owner)


# Families whose register() takes more than (name, obj).
REGISTRY_TYPES: dict[str, type[Registry]] = {"commands": CommandRegistry}


@dataclass
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    error: str
    traceback: str = ""


@dataclass
class Board:
    """A plugin manager plus the registries its discovery hooks filled."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    failures: list[PluginFailure] = field(default_factory=list)

    def __getattr__(self, family: str) -> Registry:
        registries = self.__dict__.get("registries", {})
        if family in registries:
            return registries[family]
        raise AttributeError(family)

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins, in load order."""
        return [name for name, _ in self.pm.list_name_plugin()]

    def registered_by(self, plugin_name: str) -> dict[str, list[str]]:
        """What one plugin registered, per family."""
        found: dict[str, list[str]] = {}
        for family, registry in self.registries.items():
            names = [n for n, owner in registry.owners.items() if owner == plugin_name]
            if names:
                found[family] = names
        return found

    def has_observers(self, hook_name: str) -> bool:
        """True when some plugin implements the observer hook (so the engine may skip calling it)."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())


def strict_default() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes")


def env_plugins() -> list[str]:
    """Module paths named in PEGBOARD_PLUGINS (comma or whitespace separated)."""
    raw = os.environ.get(PLUGINS_ENV, "")
    return [p for p in raw.replace(",", " ").split() if p]


def load_board(
    plugins: Iterable[str | ModuleType | object] = (),
    *,
    builtins: bool = True,
    entry_point_plugins: bool = True,
    strict: bool | None = None,
) -> Board:
    """Load built-in, entry-point, PEGBOARD_PLUGINS and given plugins, then fill every registry.

    A plugin that fails to import is recorded in ``board.failures`` and logged; with
    ``strict`` (or PEGBOARD_STRICT_PLUGINS=1) it raises PluginLoadError instead.
    """
    strict = strict_default() if strict is None else strict
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    failures: list[PluginFailure] = []

    def fail(name: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if strict:
            raise PluginLoadError(f"plugin {name!r} failed to load: {message}") from exc
        logger.warning("plugin %r failed to load and is skipped: %s", name, message)
        failures.append(PluginFailure(name, message, traceback.format_exc()))

    def add(plugin: object, name: str) -> None:
        if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
            return
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors name the bad hook
            fail(name, exc)

    if builtins:
        for module_path in DEFAULT_PLUGINS:
            _import_and_add(module_path, add, fail)
    if entry_point_plugins:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                add(ep.load(), ep.name)
            except Exception as exc:
                fail(f"{ep.name} ({ep.value})", exc)
    for item in [*env_plugins(), *plugins]:
        if isinstance(item, str):
            _import_and_add(item, add, fail)
        else:
            add(item, getattr(item, "__name__", None) or type(item).__name__)

    _drop_plugins_with_unknown_hooks(pm, fail)

    registries = {family: REGISTRY_TYPES.get(family, Registry)(family) for family in FAMILIES}
    for family, hook_name in FAMILIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            owner = impl.plugin_name
            try:
                impl.function(register=registries[family].callback(owner))
            except Exception as exc:  # a failing or duplicate registration drops the whole plugin
                pm.unregister(name=owner)
                for registry in registries.values():
                    registry.remove_owner(owner)
                fail(owner, exc)
    return Board(pm=pm, registries=registries, failures=failures)


def _drop_plugins_with_unknown_hooks(pm: pluggy.PluginManager, fail) -> None:
    """Unregister plugins that implement hooks no spec declares (usually a misspelled name)."""
    for hook_name in list(vars(pm.hook)):
        caller = getattr(pm.hook, hook_name)
        if getattr(caller, "spec", True) is not None or not hasattr(caller, "get_hookimpls"):
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or pm.get_plugin(impl.plugin_name) is None:
                continue
            pm.unregister(name=impl.plugin_name)
            fail(impl.plugin_name, PluginError(f"implements unknown hook {hook_name!r} (misspelled?)"))


def _import_and_add(module_path: str, add, fail) -> None:
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        fail(module_path, exc)
        return
    add(module, module_path)
