"""Built-in plugin: the "none" quantization scheme (plain float linear layers), the default one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pegboard.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from pegboard.core.quantization import UnquantizedScheme


def unquantized_scheme(hf_config: Any) -> UnquantizedScheme:
    """Build the float scheme (torch imported only now); it reads nothing from the config."""
    from pegboard.core.quantization import UnquantizedScheme

    return UnquantizedScheme()


@hookimpl
def register_quantization_schemes(register) -> None:
    register("none", unquantized_scheme)
