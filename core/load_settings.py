"""What an engine's settings ask of the model sources and loaders while it loads a model (no torch).

``trust_remote_code`` (may code shipped with a model's config or tokenizer run?), ``disable_progress_bar``
(show no progress bars) and ``download_dir`` (where downloads go; None: each source's cache) hold for
everything a source or loader does inside ``loading_with(config)``; the built-in ones read them with
``load_settings()``, and a plugin's source or loader may too. They travel in a context variable, so the
ModelSource and ModelLoader interfaces keep their signatures.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class LoadSettings:
    trust_remote_code: bool = False
    disable_progress_bar: bool = False
    download_dir: str | None = None

    @property
    def tqdm_disable(self) -> bool | None:
        """tqdm's ``disable``: True with ``disable_progress_bar``, else None (a bar only on a terminal)."""
        return True if self.disable_progress_bar else None


_CURRENT: ContextVar[LoadSettings] = ContextVar("pegboard_load_settings", default=LoadSettings())


def load_settings() -> LoadSettings:
    """The settings of the engine loading now (the defaults outside ``loading_with``)."""
    return _CURRENT.get()


@contextmanager
def loading_with(config: Any) -> Iterator[LoadSettings]:
    """Hold ``config``'s load settings while the block runs; the hub's download bars go off with the bars."""
    settings = LoadSettings(trust_remote_code=bool(config.trust_remote_code),
                            disable_progress_bar=bool(config.disable_progress_bar),
                            download_dir=getattr(config, "download_dir", None))
    token = _CURRENT.set(settings)
    try:
        with _hub_progress_bars(enabled=not settings.disable_progress_bar):
            yield settings
    finally:
        _CURRENT.reset(token)


@contextmanager
def _hub_progress_bars(*, enabled: bool) -> Iterator[None]:
    """huggingface_hub's bars (hub downloads, transformers' included) off while the block runs, then as before."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            enable_progress_bars()
