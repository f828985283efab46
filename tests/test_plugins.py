"""The board: how plugins are found and loaded, what happens when one is broken, and the hook reference."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pegboard.core import hookspecs, interfaces
from pegboard.core import plugins as board_module
from pegboard.core.errors import PluginError, PluginLoadError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import DEFAULT_PLUGINS, FAMILIES, load_board

ROOT = Path(__file__).resolve().parent.parent


SAMPLER_PLUGIN = """
    from pegboard.core.hookspecs import hookimpl

    @hookimpl
    def register_samplers(register):
        register("{name}", object())
"""


# ---- loading -----------------------------------------------------------------------------------------


def test_builtin_plugins_load_like_third_party_ones():
    board = load_board()
    assert board.failures == []
    assert board.plugin_names() == list(DEFAULT_PLUGINS)
    assert "LlamaForCausalLM" in board.registered_by("pegboard.plugins.llama")["model_architectures"]
    assert board.registered_by("pegboard.plugins.plain_block_allocator") == {"block_allocators": ["plain"]}


def test_a_plugin_is_a_module_path_a_module_or_any_object_with_hookimpls(module_dir):
    by_path = module_dir("sampler_by_path", SAMPLER_PLUGIN.format(name="by-path"))
    module = importlib.import_module(module_dir("sampler_as_module", SAMPLER_PLUGIN.format(name="as-module")))

    class SamplerPlugin:
        @hookimpl
        def register_samplers(self, register):
            register("as-object", object())

    board = load_board(plugins=[by_path, module, SamplerPlugin()], builtins=False)
    assert board.plugin_names() == ["sampler_by_path", "sampler_as_module", "SamplerPlugin"]
    assert board.samplers.names() == ["by-path", "as-module", "as-object"]
    assert board.samplers.owners["as-object"] == "SamplerPlugin"


def test_pegboard_plugins_variable_loads_plugins(module_dir, monkeypatch):
    module_dir("env_plugin_a", SAMPLER_PLUGIN.format(name="a"))
    module_dir("env_plugin_b", SAMPLER_PLUGIN.format(name="b"))
    monkeypatch.setenv("PEGBOARD_PLUGINS", "env_plugin_a, env_plugin_b")
    board = load_board()
    assert {"env_plugin_a", "env_plugin_b"} <= set(board.plugin_names())
    assert {"a", "b"} <= set(board.samplers.names())


def test_entry_points_of_the_pegboard_group_load_plugins(module_dir, monkeypatch):
    module_dir("installed_plugin", SAMPLER_PLUGIN.format(name="installed"))
    installed = {"pegboard": [EntryPoint(name="installed", value="installed_plugin", group="pegboard"),
                              EntryPoint(name="gone", value="uninstalled_plugin", group="pegboard")]}
    monkeypatch.setattr(board_module, "entry_points", lambda *, group: installed.get(group, []))
    board = load_board()
    assert board.samplers.owners["installed"] == "installed"  # named after the entry point
    assert [f.name for f in board.failures] == ["gone (uninstalled_plugin)"]


def test_a_plugin_given_twice_loads_once(module_dir, monkeypatch):
    name = module_dir("twice_plugin", SAMPLER_PLUGIN.format(name="twice"))
    monkeypatch.setenv("PEGBOARD_PLUGINS", name)
    board = load_board(plugins=[name])
    assert board.plugin_names().count(name) == 1 and board.samplers.names().count("twice") == 1


# ---- broken plugins ------------------------------------------------------------------------------------


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(module_dir, caplog):
    broken = module_dir("broken_import_plugin", "import a_dependency_that_is_not_installed\n")
    with caplog.at_level(logging.WARNING, logger="pegboard.plugins"):
        board = load_board(plugins=[broken])
    [failure] = board.failures
    assert failure.name == "broken_import_plugin"
    assert failure.error == "ModuleNotFoundError: No module named 'a_dependency_that_is_not_installed'"
    assert "a_dependency_that_is_not_installed" in failure.traceback
    assert "broken_import_plugin" in caplog.text
    assert "pegboard.plugins.llama" in board.plugin_names()  # everything else still loads


def test_strict_mode_raises_on_a_plugin_that_fails_to_import(module_dir, monkeypatch):
    broken = module_dir("strictly_broken_plugin", "raise ImportError('needs the foo extra')\n")
    with pytest.raises(PluginLoadError, match="'strictly_broken_plugin' failed to load: ImportError: needs the foo"):
        load_board(plugins=[broken], strict=True)
    monkeypatch.setenv("PEGBOARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError):
        load_board(plugins=[broken])


def test_a_plugin_whose_register_hook_raises_is_unloaded_and_reported():
    class Crashing:
        @hookimpl
        def register_executors(self, register):
            raise RuntimeError("no GPU driver")

    board = load_board(plugins=[Crashing()])
    assert [(f.name, f.error) for f in board.failures] == [("Crashing", "RuntimeError: no GPU driver")]
    assert "Crashing" not in board.plugin_names()


class Misspelled:
    @hookimpl
    def register_model_loader(self, register):  # the hook is register_model_loaders
        register("x", object())


def test_a_misspelled_hookimpl_drops_that_plugin_and_names_the_hook():
    board = load_board(plugins=[Misspelled()])
    [failure] = board.failures
    assert failure.name == "Misspelled" and "register_model_loader" in failure.error
    assert "Misspelled" not in board.plugin_names() and "gguf" in board.model_loaders


def test_a_misspelled_hookimpl_raises_in_strict_mode():
    with pytest.raises(PluginLoadError, match="register_model_loader"):
        load_board(plugins=[Misspelled()], strict=True)


def test_duplicate_names_are_rejected_naming_both_plugins():
    class First:
        @hookimpl
        def register_block_allocators(self, register):
            register("fancy", object())

    class Second:
        @hookimpl
        def register_block_allocators(self, register):
            register("fancy", object())

    class Third:  # registers fine in one family, then collides in another: all of it is dropped
        @hookimpl
        def register_executors(self, register):
            register("third-executor", object())

        @hookimpl
        def register_block_allocators(self, register):
            register("fancy", object())

    board = load_board(plugins=[First(), Second(), Third()])
    assert [f.name for f in board.failures] == ["Second", "Third"]
    assert "plugin 'Second' registered block_allocators 'fancy', which plugin 'First' already registered" \
        in board.failures[0].error
    assert board.block_allocators.owners["fancy"] == "First"
    assert "third-executor" not in board.executors
    with pytest.raises(PluginLoadError, match="plugin 'Second' registered block_allocators 'fancy'"):
        load_board(plugins=[First(), Second()], strict=True)


def test_asking_for_an_unregistered_name_lists_what_is_available():
    board = load_board()
    with pytest.raises(PluginError, match=r"no executors named 'ray' is registered \(available: uniproc\)"):
        board.executors.get("ray")


# ---- observers --------------------------------------------------------------------------------------------


def test_the_engine_calls_observer_hooks_only_when_some_plugin_implements_them():
    class StepObserver:
        @hookimpl
        def on_step_end(self, stats):
            pass

    assert not load_board(builtins=False).has_observers("on_step_end")
    observed = load_board(plugins=[StepObserver()], builtins=False)
    assert observed.has_observers("on_step_end") and not observed.has_observers("on_request_finished")


# ---- the hook reference ------------------------------------------------------------------------------------


def hookspec_names() -> list[str]:
    return [name for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")]


class _Written:
    """An annotation as the source spells it (``from __future__ import annotations`` keeps them as text)."""

    def __init__(self, annotation: object) -> None:
        self.text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    def __repr__(self) -> str:
        return self.text


def rendered(name: str, function) -> str:
    """``name(parameters) -> return``: ``inspect.signature`` of ``function`` with its annotations unquoted."""
    signature = inspect.signature(function)

    def written(annotation):
        return annotation if annotation is inspect.Signature.empty else _Written(annotation)

    signature = signature.replace(
        parameters=[p.replace(annotation=written(p.annotation)) for p in signature.parameters.values()],
        return_annotation=written(signature.return_annotation))
    return f"{name}{signature}"


def reference() -> str:
    """docs/hooks.md with each run of whitespace made one space (a long signature may wrap after a comma)."""
    return " ".join((ROOT / "docs" / "hooks.md").read_text().split())


def test_every_hook_is_documented_with_its_exact_signature():
    assert set(FAMILIES.values()) < set(hookspec_names())
    text = reference()
    for name in hookspec_names():
        heading = f"### `{rendered(name, getattr(hookspecs, name))}`"
        assert heading in text, f"docs/hooks.md lacks the heading {heading}"


def hookimpl_test_files() -> dict[str, set[str]]:
    """Hook name -> the test files in which a ``@hookimpl`` function of that name is a throwaway plugin's."""
    def is_hookimpl(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return (target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)) == "hookimpl"

    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(is_hookimpl(d) for d in node.decorator_list):
                found.setdefault(node.name, set()).add(path.name)
    return found


def test_every_hook_has_a_throwaway_plugin_test():
    implemented = hookimpl_test_files()
    assert [name for name in hookspec_names() if name not in implemented] == []


def documented_protocols() -> list[type]:
    """Every family's interface, those its capabilities require, and every Protocol of core/interfaces.py."""
    found = {interfaces.protocol_at(path) for path in [*interfaces.INTERFACES.values(),
                                                       *interfaces.CAPABILITIES.values()]}
    found |= {value for value in vars(interfaces).values()
              if isinstance(value, type) and value.__module__ == interfaces.__name__ and value._is_protocol}
    return sorted(found, key=lambda protocol: protocol.__name__)


def declarations(protocol: type) -> list[str]:
    """What docs/hooks.md must show of a Protocol: its class line, and each member declared in its body as the code
    declares it (attributes with their annotations, methods and properties with their signatures)."""
    bases = ", ".join(base.__name__ for base in protocol.__bases__)
    lines = [f"class {protocol.__name__}({bases}):"]
    annotations = vars(protocol).get("__annotations__", {})
    lines += [f"{name}: {_Written(annotation)!r}" for name, annotation in annotations.items()]
    for name, value in vars(protocol).items():
        if name.startswith("_") and name not in ("__init__", "__call__"):
            continue
        if isinstance(value, property):
            lines.append(f"@property def {rendered(name, value.fget)}:")
        elif inspect.isfunction(value) and value.__qualname__ == f"{protocol.__qualname__}.{name}":  # not typing's
            lines.append(f"def {rendered(name, value)}:")
    return lines


def test_every_family_has_an_interface_and_the_reference_shows_each_as_the_code_declares_it():
    assert set(interfaces.INTERFACES) == set(FAMILIES) - {"commands"}  # commands: core/commands.py's Command
    assert interfaces.INSTANCE_FAMILIES < set(interfaces.INTERFACES)
    text = reference()
    for protocol in documented_protocols():
        for line in declarations(protocol):
            assert line in text, f"docs/hooks.md does not show {protocol.__name__}'s {line!r}"
