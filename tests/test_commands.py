"""Commands as plugins: ``register_commands`` adds ``pegboard`` subcommands; the CLI core only dispatches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pegboard.core.cli import main
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board

HELLO_PLUGIN = """
    from pegboard.core.hookspecs import hookimpl

    greeted = []

    def add_arguments(parser):
        parser.add_argument("--name", default="world")

    def run(args, board):
        greeted.append(args.name)
        print(f"hello, {args.name} ({args.command})")
        return 3

    @hookimpl
    def register_commands(register):
        register("hello", add_arguments, run, help="say hello (test plugin)")
        register("bench hello", add_arguments, run, help="a benchmark of saying hello (test plugin)")
"""


def command_plugin(register_call: str, *, prelude: str = "") -> str:
    """Source of a plugin whose ``register_commands`` runs ``register_call``."""
    return (f"from pegboard.core.hookspecs import hookimpl\n{prelude}\n"
            f"@hookimpl\ndef register_commands(register):\n    {register_call}\n")


def test_a_plugin_command_runs_with_its_own_arguments_and_exit_status(module_dir, capsys):
    plugin = module_dir("hello_plugin", HELLO_PLUGIN)
    assert main(["hello", "--name", "pegboard", "--plugin", plugin]) == 3
    assert sys.modules[plugin].greeted == ["pegboard"]
    assert capsys.readouterr().out == "hello, pegboard (hello)\n"


def test_a_command_of_two_words_joins_the_group_of_its_first_word(module_dir, capsys):
    plugin = module_dir("bench_hello_plugin", HELLO_PLUGIN)
    assert main(["bench", "hello", "--plugin", plugin]) == 3
    assert capsys.readouterr().out == "hello, world (bench hello)\n"
    with pytest.raises(SystemExit):
        main(["--help", "--plugin", plugin])
    assert "commands: throughput, serve, hello\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--help", "--plugin", plugin])
    assert "a benchmark of saying hello (test plugin)" in capsys.readouterr().out


def test_pegboard_plugins_lists_the_commands_each_plugin_registered(module_dir, capsys):
    plugin = module_dir("listed_hello_plugin", HELLO_PLUGIN)
    assert main(["plugins", "--plugin", plugin]) == 0
    out = capsys.readouterr().out
    assert f"{plugin}\n  commands: hello, bench hello\n" in out
    for builtin, commands in [("plugins_command", "plugins"), ("generate_command", "generate"),
                              ("serve_command", "serve"), ("bench", "bench throughput, bench serve")]:
        assert f"pegboard.plugins.{builtin}\n  commands: {commands}\n" in out


@pytest.mark.parametrize("name, error", [
    ("serve", "plugin 'Clashing' registered commands 'serve', which plugin 'pegboard.plugins.serve_command' "
              "already registered"),
    ("bench", "plugin 'Clashing' registered commands 'bench', which clashes with 'bench throughput' of plugin "
              "'pegboard.plugins.bench': a command cannot also be a group of commands"),
])
def test_a_name_another_plugin_took_or_a_group_name_drops_the_plugin_naming_both(name, error):
    class Clashing:
        @hookimpl
        def register_commands(self, register):
            register(name, lambda parser: None, lambda args, board: 0)

    board = load_board(plugins=[Clashing()])
    assert [f.name for f in board.failures] == ["Clashing"] and error in board.failures[0].error
    assert "Clashing" not in board.commands.owners.values() and "serve" in board.commands


@pytest.mark.parametrize("register_call, error", [
    ("register('two  spaces', print, print)", "command name 'two  spaces' must be words separated by single spaces"),
    ("register('nothing-to-run', print, None)", "command 'nothing-to-run': run must be callable"),
    ("register('no-run', print)", "missing 1 required positional argument: 'run'"),
])
def test_a_malformed_registration_drops_the_plugin_with_the_reason(module_dir, register_call, error):
    plugin = module_dir("malformed_command_plugin", command_plugin(register_call))
    board = load_board(plugins=[plugin])
    assert [f.name for f in board.failures] == [plugin] and error in board.failures[0].error


def test_a_command_that_fails_to_load_is_reported_when_chosen_and_the_rest_still_works(module_dir, capsys):
    plugin = module_dir("broken_command_plugin", command_plugin(
        "register('broken', add_arguments, lambda args, board: 0, help='needs a missing module')",
        prelude="def add_arguments(parser):\n    import some_missing_dependency\n"))
    assert main(["broken", "--plugin", plugin]) == 2
    assert ("error: the command 'pegboard broken' (plugin 'broken_command_plugin') is unavailable: "
            "ModuleNotFoundError: No module named 'some_missing_dependency'") in capsys.readouterr().err
    assert main(["plugins", "--plugin", plugin]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--help", "--plugin", plugin])
    assert exit_info.value.code == 0 and "needs a missing module" in capsys.readouterr().out


def test_help_and_plugins_import_neither_torch_nor_the_server():
    code = ("import sys\nfrom pegboard.core.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nmain(['plugins'])\n"
            "print([m for m in sys.modules if m == 'torch' or m.startswith('pegboard.server')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr
