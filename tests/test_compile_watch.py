"""The compile watch (kernels/compile_watch.py) logs a Triton kernel variant built after warm-up, naming it, and
stays quiet during warm-up; hooks installed before it keep being called."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from pegboard.kernels.compile_watch import CompileWatch


def runtime_with(cache_hook=None, post_hook=None) -> SimpleNamespace:
    return SimpleNamespace(jit_cache_hook=cache_hook, jit_post_compile_hook=post_hook)


def build(runtime: SimpleNamespace, signature: str) -> None:
    """What Triton's JIT does around one compile: the cache-miss hook, the compile, the post-compile hook."""
    assert not runtime.jit_cache_hook(repr=signature)  # a true answer would skip the compile
    runtime.jit_post_compile_hook(repr=signature)


def test_compiles_during_warm_up_are_not_reported(caplog):
    runtime, watch = runtime_with(), CompileWatch()
    watch.install(runtime)
    with caplog.at_level(logging.WARNING, "pegboard.kernels"):
        build(runtime, "_prefill_kernel(q_ptr: *bf16)")
    assert watch.late_compiles == [] and not caplog.records


def test_a_compile_after_warm_up_is_a_warning_naming_the_kernel(caplog):
    runtime, watch = runtime_with(), CompileWatch()
    watch.install(runtime)
    watch.warmed_up = True
    with caplog.at_level(logging.WARNING, "pegboard.kernels"):
        build(runtime, "_decode_split_kernel(tables_ptr: *i32)")
    assert [signature for signature, _ in watch.late_compiles] == ["_decode_split_kernel(tables_ptr: *i32)"]
    assert "after warm-up" in caplog.text and "_decode_split_kernel(tables_ptr: *i32)" in caplog.text


def test_hooks_installed_before_the_watch_still_run_and_keep_their_answer():
    calls = []
    runtime = runtime_with(cache_hook=lambda **kw: calls.append(("miss", kw["repr"])) or True,
                           post_hook=lambda **kw: calls.append(("built", kw["repr"])))
    CompileWatch().install(runtime)
    assert runtime.jit_cache_hook(repr="k") is True  # the earlier hook asked Triton to skip: still honoured
    runtime.jit_post_compile_hook(repr="k")
    assert calls == [("miss", "k"), ("built", "k")]
