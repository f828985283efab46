"""``--config FILE.yaml`` as vLLM reads it: keys are a command's long flag names (dashes or underscores, without
``--``), values what the flag takes; the file's values become the command's defaults, so the command line overrides
them. A key that is no flag of the command is refused by name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pegboard.core.errors import InvalidParameterError

EARLY_KEYS = ("plugin", "log_level")  # read before the parsers exist (core/cli.py)


def read_config_file(path: str) -> dict[str, Any]:
    """The file's mapping, keys in snake case."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidParameterError(f"--config {path!r} is not a file")
    try:
        values = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise InvalidParameterError(f"--config {path!r} is not YAML: {str(exc).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise InvalidParameterError(f"--config {path!r} must map flag names to values (key: value lines)")
    return {key.replace("-", "_"): value for key, value in values.items()}


def apply_config_file(parser: argparse.ArgumentParser, values: dict[str, Any], path: str) -> None:
    """Make the file's values the defaults of ``parser`` (a command's), each checked as the flag checks its own."""
    actions = {option[2:].replace("-", "_"): action for action in parser._actions
               for option in action.option_strings if option.startswith("--")}
    actions.update({action.dest: action for action in parser._actions if not action.option_strings})  # MODEL
    defaults = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or key == "config":
            raise InvalidParameterError(f"--config {path!r}: {key!r} is not a flag of this command "
                                        f"(see --help)")
        if getattr(action, "refusal", None):  # a flag that refuses itself (plugins/serve_command/refused_vllm_flags.py)
            raise InvalidParameterError(f"--config {path!r}: {key}: {action.refusal}")
        defaults[action.dest] = _value_for(action, value, f"--config {path!r}: {key}")
        action.required = False  # the file gave it (generate's --prompt)
    parser.set_defaults(**defaults)


def _value_for(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` as the flag would have parsed it from the command line."""
    if action.nargs == 0:  # store_true, store_false, --x/--no-x
        if not isinstance(value, bool):
            raise InvalidParameterError(f"{where} takes true or false, got {value!r}")
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, item, where) for item in items]
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)):
        import json

        value = json.dumps(value)  # a JSON-valued flag (--speculative-config, --allowed-origins)
    elif isinstance(value, bool):
        raise InvalidParameterError(f"{where} takes a value, not {value!r}")
    text = str(value)
    try:
        parsed = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{where}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise InvalidParameterError(f"{where}: {parsed!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed
