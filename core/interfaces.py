"""The interfaces of what the hook families register, as ``typing.Protocol``s, and the start-up check against them.

The families whose Protocol lives elsewhere: ``ModelSource`` and ``ModelLoader`` (core/model_files.py),
``AttentionBackend`` (core/attention.py), ``QuantizationScheme`` (core/quantization.py), ``LogitsProcessor``
(core/logits_processors.py). ``INTERFACES`` names each family's. A capability is a declared ``supports_*`` flag,
never probed: an object that declares one must also have the members of the interface it names
(``CAPABILITIES``). docs/hooks.md shows every Protocol; tests/test_plugins.py checks it matches this code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

from pegboard.core.errors import PluginError

if TYPE_CHECKING:  # keep this module torch-free at import time
    import torch
    from transformers import PretrainedConfig

    from pegboard.core.attention import AttentionContext
    from pegboard.core.byte_dfa import ByteDFA
    from pegboard.core.config import EngineConfig
    from pegboard.core.launched_step import LaunchedStep
    from pegboard.core.messages import RunnerOutput, SchedulerOutput
    from pegboard.core.model_files import ModelFiles, ModelLoader
    from pegboard.core.plugins import Board
    from pegboard.core.request import Request
    from pegboard.core.tool_calls import ToolParse
    from pegboard.core.worker_state import CachedRequestState


# ---- executors ----------------------------------------------------------------------------------------------


@runtime_checkable
class Executor(Protocol):
    """How the model's workers run: built once per engine core, it loads the model and runs each step."""

    supports_launch: bool  # True: a LaunchingExecutor, whose steps may overlap the host's work (async scheduling)

    def __init__(self, config: EngineConfig, board: Board, files: ModelFiles, loader: ModelLoader,
                 hf_config: PretrainedConfig, max_model_len: int) -> None:
        """Load the model and allocate the workers' KV caches."""

    @property
    def num_kv_blocks(self) -> int:
        """KV blocks the workers allocated (the engine core sizes its block allocator from it)."""

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        """Run one step and wait for its tokens (the step's finished ids are forgotten first)."""


@runtime_checkable
class LaunchingExecutor(Executor, Protocol):
    """An executor that declares ``supports_launch``: it queues a step and returns before its tokens exist."""

    @property
    def queues_work(self) -> bool:
        """Whether launched work runs while the host goes on (CUDA): async scheduling is then on by default."""

    def launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        """Queue one step; ``result()`` of what it returns waits for the step's RunnerOutput."""


# ---- samplers -----------------------------------------------------------------------------------------------


class SampledTokens(Protocol):
    """One step's choices as device tensors (the runner copies them to the host once)."""

    token_ids: torch.Tensor  # [N] int64
    logprobs: torch.Tensor | None  # [N, 1 + K] float32: the chosen token, then the top K; None: no row asked
    logprob_token_ids: torch.Tensor | None  # [N, 1 + K] int64
    ranks: torch.Tensor | None  # [N] int64: the chosen token's rank


@runtime_checkable
class Sampler(Protocol):
    """Chooses each row's next token; one per engine, built as ``factory(vocab_size=, device=, seed=)``."""

    def sample(self, logits: torch.Tensor, requests: Sequence[CachedRequestState]) -> SampledTokens:
        """logits [N, V] float32 after the logits processors, row i belonging to requests[i]; stays on the device."""

    def free(self, request_ids: list[str]) -> None:
        """Forget the per-request state (seeded generators, token counts) of finished or aborted requests."""


# ---- block allocators ---------------------------------------------------------------------------------------


@runtime_checkable
class BlockAllocator(Protocol):
    """Hands out KV-cache blocks to requests (pure Python); built as ``allocator_cls(num_blocks, block_size)``."""

    num_blocks: int
    block_size: int

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds."""

    @property
    def usage(self) -> float:
        """Fraction of the blocks in use, 0.0 to 1.0."""

    def match_prefix(self, request: Request) -> int:
        """Attach cached blocks of the request's prefix to its block table; how many tokens they hold."""

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the request's block table by ``num_new_tokens`` tokens; False when blocks ran out."""

    def on_tokens_computed(self, request: Request) -> None:
        """A step computed more of the request's KV (a prefix cache hashes its full blocks here)."""

    def free(self, request: Request) -> None:
        """Release the request's blocks and empty its block table."""


# ---- grammars -----------------------------------------------------------------------------------------------


@runtime_checkable
class GrammarMatcher(Protocol):
    """Follows one request's tokens through its compiled grammar."""

    supports_bitmask: bool  # True: a BitmaskGrammarMatcher, which fills its row of the step's bitmask itself

    def allowed_token_ids(self) -> Sequence[int]:
        """The tokens the grammar allows next (the rest are masked to -inf)."""

    def accept(self, token_id: int) -> None:
        """Advance by one accepted token."""

    def is_finished(self) -> bool:
        """Whether the output so far is complete (the end-of-sequence token is then allowed)."""


@runtime_checkable
class BitmaskGrammarMatcher(GrammarMatcher, Protocol):
    """A matcher that declares ``supports_bitmask``: it writes the allowed tokens as bits, skipping a Python list."""

    def fill_bitmask(self, words: torch.Tensor) -> None:
        """Set bit j of ``words[w]`` ([ceil(V / 32)] int32, zeroed, on the host) for each allowed token 32 w + j."""


@runtime_checkable
class TableGrammarMatcher(BitmaskGrammarMatcher, Protocol):
    """A bitmask matcher that declares ``supports_mask_table``: its rows are rows of one table that matchers of
    the same compiled grammar share, so a step gathers all their rows in one indexing op."""

    supports_byte_dfa: bool  # True: a ByteDFAMatcher, which a step can follow on the device

    def mask_row(self) -> tuple[torch.Tensor, int]:
        """(the [S, ceil(V / 32)] int32 table on the host, the row of the current state)."""


@runtime_checkable
class ByteDFAMatcher(TableGrammarMatcher, Protocol):
    """A table matcher that declares ``supports_byte_dfa``: its grammar is a ByteDFA and its state a number in
    it, so the engine may follow it on the device and never wait for its tokens on the host."""

    state: int

    def byte_dfa(self) -> ByteDFA:
        """The compiled grammar's ByteDFA (the same object for every matcher of it)."""


@runtime_checkable
class Grammar(Protocol):
    """Guided decoding of one kind (``json_schema``, ``regex``, ...); registered as an instance."""

    def validate(self, spec: Any) -> None:
        """Raise InvalidParameterError naming what is wrong with ``spec``; cheap (the front end calls it)."""

    def compile(self, spec: Any, *, vocab_size: int, tokenizer: Any = None) -> GrammarMatcher:
        """A fresh matcher for one request's spec (the engine calls it first off its loop: cache what is slow)."""


# ---- tool parsers -------------------------------------------------------------------------------------------


@runtime_checkable
class ToolParser(Protocol):
    """Finds tool calls in one choice's text as it grows; built per choice as ``factory(tools=[function, ...])``
    (each an OpenAI function definition: name, description, parameters)."""

    def feed(self, text: str) -> ToolParse:
        """The next piece of the text -> the content and the calls it completes; text that may begin a call waits."""

    def finish(self) -> ToolParse:
        """The text ended: what waited, as content or calls."""


# ---- proposers ----------------------------------------------------------------------------------------------


@runtime_checkable
class Proposer(Protocol):
    """Guesses requests' next tokens (speculative decoding); built as ``factory(config=, num_speculative_tokens=)``."""

    def propose(self, requests: Sequence[Request]) -> list[list[int]]:
        """Up to k proposed tokens per request (from ``request.all_token_ids``), [] for no guess."""


# ---- model architectures ------------------------------------------------------------------------------------


@runtime_checkable
class CausalLM(Protocol):
    """The model an architecture factory builds (a ``torch.nn.Module``), as the runner and the loaders use it."""

    layers: Sequence[Any]  # the KV-cache layers; layers[0].self_attn has num_heads, num_kv_heads and head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        """input_ids, positions [T] (one flat batch of every request's new tokens) -> hidden states [T, D]."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, D] of the rows to sample -> float32 logits [N, V]."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the parameters (what loaders call)."""


class ModelFactory(Protocol):
    """Builds the model of one HF architecture (registered under its name, a class or a function)."""

    def __call__(self, hf_config: PretrainedConfig, *, max_positions: int) -> CausalLM:
        """The model with empty parameters, on the current device and dtype, from the current layer factory."""


# ---- the check ----------------------------------------------------------------------------------------------

# family -> "module:Protocol" of its entries (INSTANCE_FAMILIES, checked when registered) or of what an entry builds
INTERFACES: dict[str, str] = {
    "model_sources": "pegboard.core.model_files:ModelSource",
    "model_loaders": "pegboard.core.model_files:ModelLoader",
    "model_architectures": "pegboard.core.interfaces:CausalLM",
    "quantization_schemes": "pegboard.core.quantization:QuantizationScheme",
    "attention_backends": "pegboard.core.attention:AttentionBackend",
    "samplers": "pegboard.core.interfaces:Sampler",
    "logits_processors": "pegboard.core.logits_processors:LogitsProcessor",
    "grammars": "pegboard.core.interfaces:Grammar",
    "tool_parsers": "pegboard.core.interfaces:ToolParser",
    "proposers": "pegboard.core.interfaces:Proposer",
    "block_allocators": "pegboard.core.interfaces:BlockAllocator",
    "executors": "pegboard.core.interfaces:Executor",
}
INSTANCE_FAMILIES = frozenset({"model_sources", "model_loaders", "grammars"})

# a declared capability -> the interface an object that declares it must also have
CAPABILITIES: dict[str, str] = {
    "supports_launch": "pegboard.core.interfaces:LaunchingExecutor",
    "supports_cuda_graphs": "pegboard.core.attention:CudaGraphAttentionBackend",
    "supports_bitmask": "pegboard.core.interfaces:BitmaskGrammarMatcher",
    "supports_mask_table": "pegboard.core.interfaces:TableGrammarMatcher",
    "supports_byte_dfa": "pegboard.core.interfaces:ByteDFAMatcher",
}


def protocol_at(path: str) -> type:
    """The Protocol named ``module:Name`` (imported only now: some of those modules import torch)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def interface(family: str) -> type:
    """The Protocol of what a family's entries are (instance families) or build (the others)."""
    return protocol_at(INTERFACES[family])


def members(protocol: type) -> list[str]:
    """The public attributes and methods a Protocol asks for, in the order it declares them (bases first)."""
    names: list[str] = []
    for base in reversed(protocol.__mro__):
        if base is protocol or (getattr(base, "_is_protocol", False) and base.__module__ != "typing"):
            for name in [*getattr(base, "__annotations__", {}), *vars(base)]:
                if (not name.startswith("_") or name == "__call__") and name not in names:
                    names.append(name)
    return names


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (looked up as the core will: an ``nn.Module``'s submodules
    count, which ``isinstance`` of a runtime Protocol does not see from Python 3.12)."""
    return [name for name in members(protocol) if not hasattr(obj, name)]


def require(obj: object, protocol: type, *, kind: str, name: str = "", owner: str = "") -> None:
    """Refuse ``obj`` with a PluginError naming it, its plugin and the members it lacks of ``protocol``, or of the
    interface that a capability it declares needs."""
    where = f" (registered as {name!r} by plugin {owner!r})" if owner else ""
    label = f"{kind} {getattr(obj, '__name__', None) or type(obj).__name__!r}"
    missing = missing_members(obj, protocol)
    if missing:
        raise PluginError(f"{label} lacks {', '.join(missing)} of the {protocol.__name__} interface{where}")
    for flag, path in CAPABILITIES.items():
        if flag in members(protocol) and getattr(obj, flag):
            needed = protocol_at(path)
            missing = missing_members(obj, needed)
            if missing:
                raise PluginError(f"{label} declares {flag} but lacks {', '.join(missing)} of the "
                                  f"{needed.__name__} interface{where}")
