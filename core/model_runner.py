"""ModelRunner: loads the model, owns the paged KV cache, runs one flat token batch per step."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from pegboard.core.attention import AttentionBackend, AttentionContext, BatchLayout, KVCacheSpec
from pegboard.core.config import EngineConfig
from pegboard.core.cpu_weights import pack_model_weights, quantized_gguf_types, wants_packed_weights
from pegboard.core.cuda_graphs import DecodeGraphs
from pegboard.core.kv_cache_dtype import resolve_kv_cache_dtype
from pegboard.core.kv_cache_sizing import size_kv_cache
from pegboard.core.piecewise_graphs import PiecewiseGraphs
from pegboard.core.layer_factory import LayerFactory, building_with
from pegboard.core.logprobs import top_logprobs
from pegboard.core.errors import InvalidParameterError, UnsupportedModelError
from pegboard.core.model_files import ModelFiles
from pegboard.kernels.compile_watch import watch_triton_compiles
from pegboard.core.device_grammar_processor import DeviceGrammarProcessor, follows_grammars_on_device
from pegboard.core.grammar_processor import GrammarProcessor
from pegboard.core.interfaces import Sampler
from pegboard.core.logits_processors import LogitsProcessors
from pegboard.core.messages import RunnerOutput, SchedulerOutput, TokenLogprobs
from pegboard.core.launched_step import LaunchedStep
from pegboard.core.worker_state import BatchState, CachedRequestState
from pegboard.core.staging import HostStaging, padded_rows
from pegboard.core.structured_outputs_config import structured_outputs_backend
from pegboard.core.tokenizer_loading import shared_tokenizer
from pegboard.core.devices import resolve_device, resolve_dtype
from pegboard.core.weight_loading import empty_parameters, process_weights_after_loading

logger = logging.getLogger("pegboard.runner")


class ModelRunner:
    """Everything on the device: model weights, KV cache, attention backend, sampler."""

    def __init__(self, config: EngineConfig, board: Any, files: ModelFiles, loader: Any, hf_config: Any,
                 max_model_len: int) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, hf_config, self.device)
        self.hf_config = hf_config
        self.max_model_len = max_model_len
        if config.cpu_threads is not None:
            if self.device.type != "cpu":
                raise InvalidParameterError(f"cpu_threads sets the threads of a CPU engine; this one runs on "
                                            f"{self.device}", param="cpu_threads")
            torch.set_num_threads(config.cpu_threads)

        architecture = (getattr(hf_config, "architectures", None) or ["?"])[0]
        if architecture not in board.model_architectures:
            supported = ", ".join(board.model_architectures.names()) or "none"
            raise UnsupportedModelError(f"architecture {architecture!r} is not supported by any loaded plugin "
                                        f"(supported: {supported})")
        scheme = board.quantization_schemes.build(config.quantization or "none", hf_config)
        layers = LayerFactory(scheme=scheme, dtype=self.dtype)
        started = time.perf_counter()
        with empty_parameters(self.dtype), torch.device(self.device), building_with(layers):
            self.model = board.model_architectures.build(architecture, hf_config, max_positions=max_model_len)
        with torch.no_grad():
            loader.load_weights(self.model, files, hf_config)
            process_weights_after_loading(self.model)
            packed = wants_packed_weights(config.cpu_weights, self.device, self.dtype, loader,
                                          config.tensor_parallel_size)
            if packed:
                bits = {"int8": 8, "int4": 4}.get(config.cpu_weights)  # every layer requantized, whatever the file
                blocks = None if bits else loader.iter_quantized_blocks(files, hf_config, quantized_gguf_types())
                pack_model_weights(self.model, blocks, requantize_bits=bits or 8,
                                   decoder_blocks=not config.enforce_eager)
        self.model.eval()
        logger.info("loaded %s (%s, %s) in %.1f s", architecture, self.dtype, self.device,
                    time.perf_counter() - started)

        self.vocab_size = hf_config.vocab_size
        self.block_size = config.block_size
        self.sampler: Sampler = board.samplers.build(
            config.sampler, vocab_size=self.vocab_size, device=self.device, seed=config.seed)
        backend_name = self._attention_backend_name(board)
        attn = self.model.layers[0].self_attn

        def make_backend(spec: KVCacheSpec) -> AttentionBackend:
            return board.attention_backends.build(backend_name, spec, num_heads=attn.num_heads,
                                                  scale=attn.head_dim ** -0.5, device=self.device)

        watch = watch_triton_compiles() if self.device.type == "cuda" else None
        if watch is not None:
            watch.warmed_up = False  # this engine's warm-up compiles are expected (a second engine in a process too)
        kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, self.dtype, attention_backend=backend_name,
                                          packed_cpu=packed and backend_name == "torch")
        self.kv_spec = size_kv_cache(self.model, make_backend, kv_dtype, self.sampler, config, self.device,
                                     self.block_size, self.max_model_len)
        self.attention = make_backend(self.kv_spec)
        if packed and hasattr(self.attention, "cpu_paged_decode"):  # the torch backend's decode rows in C++
            from pegboard.kernels.cpu_build import compiled_ops

            self.attention.cpu_paged_decode = compiled_ops().paged_decode_attention
        self.decode_graphs = None
        if self.device.type == "cuda" and not config.enforce_eager and self.attention.supports_cuda_graphs:
            self.decode_graphs = DecodeGraphs(self.model, self.attention, max_batch=config.max_num_seqs,
                                              max_blocks=-(-max_model_len // self.block_size), device=self.device)
            self.decode_graphs.capture()
        self.prefill_graphs = None  # steps with prefill chunks: pieces between attention calls, per token bucket
        if self.device.type == "cuda" and not config.enforce_eager and config.cudagraph_mode == "full_and_piecewise":
            self.prefill_graphs = PiecewiseGraphs(
                self.model, self.attention, max_tokens=config.max_num_batched_tokens, num_heads=attn.num_heads,
                num_kv_heads=self.kv_spec.num_kv_heads, head_dim=self.kv_spec.head_dim, dtype=self.dtype,
                device=self.device)
            self.prefill_graphs.capture()
        if watch is not None:
            _warm_token_bitmask(self.vocab_size, self.device)  # a first guided request then compiles nothing
            watch.warmed_up = True  # from here on, a Triton compile is a step's stall: logged
        self.batch = BatchState()
        self._previous_samples = torch.zeros(0, dtype=torch.long, device=self.device)  # the last step's tokens
        self._previous_sample_rows: dict[str, int] = {}  # request id -> its (last) row in _previous_samples
        self._last_step: LaunchedStep | None = None
        self._wants_host_tokens: set[str] = set()  # requests whose rows need their previous tokens on the host
        self._staging = HostStaging(self.device, torch.long)
        self._staging32 = HostStaging(self.device, torch.int32)
        processors = [board.logits_processors.build(name, vocab_size=self.vocab_size, device=self.device, config=config)
                      for name in board.logits_processors.names()]
        self._device_grammar: DeviceGrammarProcessor | None = None
        self._no_proposals: set[str] = set()  # guided requests: their proposals' rows are not masked as proposals
        if board.grammars.names():  # guided decoding: a matcher per request that asks for a registered grammar
            backend = structured_outputs_backend(config.structured_outputs_config)
            eos_of: Callable[[str], int | None] = lambda rid: self.batch.requests[rid].eos_token_id
            load = lambda: shared_tokenizer(config, board, files)  # noqa: E731
            if follows_grammars_on_device(self.device):
                self._device_grammar = DeviceGrammarProcessor(board.grammars, vocab_size=self.vocab_size,
                                                              device=self.device, eos_token_id=eos_of,
                                                              load_tokenizer=load, backend=backend)
                processors.append(self._device_grammar)
            processors.append(GrammarProcessor(board.grammars, vocab_size=self.vocab_size, device=self.device,
                                               eos_token_id=eos_of, load_tokenizer=load, backend=backend,
                                               defer_to=self._device_grammar))
        self.logits_processors = LogitsProcessors(processors)

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_spec.num_blocks

    def _attention_backend_name(self, board: Any) -> str:
        name = self.config.attention_backend
        if name != "auto":
            return name
        if self.device.type == "cuda" and "triton" in board.attention_backends:
            return "triton"
        return "torch"

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        """Run one step and wait for its tokens."""
        return self.launch(scheduled).result()

    @torch.inference_mode()
    def launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        """Queue the step's forward pass and sampling on the device; its tokens travel to the host meanwhile.

        A request whose previous token is still pending (sampled by the step launched just before this one)
        takes that token as its input straight from the device. Where a sampled row needs its previous tokens
        on the host (penalties, a logits processor that follows accepted tokens), the previous step is
        collected after this step's forward pass is queued and before it samples.
        """
        added, forgotten = self.batch.update(scheduled)
        self._forget(forgotten)
        for state in added:
            self._add(state)
        if scheduled.is_empty:  # only finished requests to forget
            return LaunchedStep(lambda: RunnerOutput((), ()))
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, context_lens, tables = [], [], []
        pending_at: list[int] = []  # input positions whose token the previous step is sampling
        pending_rows: list[int] = []  # ... and its row among that step's samples
        sample_rows: list[int] = []
        sampled: list[CachedRequestState] = []  # one per sampled row (1 + proposed tokens rows per request)
        prompt_rows: list[int] = []
        prompt_targets: list[int] = []
        prompt_spans: list[tuple[str, int, int]] = []  # (request id, positions, top k)
        for request_id, n in scheduled.num_scheduled_tokens.items():
            state = self.batch.requests[request_id]
            proposed = scheduled.spec_token_ids.get(request_id, ())
            start = state.num_computed_tokens
            offset = len(input_ids)
            table = state.block_ids
            real = n - len(proposed)  # tokens of the sequence (the rest are proposals)
            known = state.all_token_ids[start:start + real]
            input_ids.extend(known)
            if len(known) < real:
                pending_at.append(len(input_ids))
                pending_rows.append(self._previous_sample_rows[request_id])
                input_ids.append(0)
            input_ids.extend(proposed)
            positions.extend(range(start, start + n))
            if n == 1:
                slots.append(table[start // bs] * bs + start % bs)
            else:
                _extend_slots(slots, table, bs, start, start + n)
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(table)
            state.num_computed_tokens = start + n
            if start + real == state.num_tokens + state.num_pending_tokens:  # reaches the end: samples
                sample_rows.extend(range(offset + real - 1, offset + n))
                sampled.extend([state] * (len(proposed) + 1))
                state.spec_rows = len(proposed) + 1
            k = state.sampling_params.prompt_logprobs
            if k is not None:
                first = max(start, state.num_prompt_logprobs)
                count = min(start + real, state.num_prompt_tokens - 1) - first
                if count > 0:
                    prompt_rows.extend(range(offset + first - start, offset + first - start + count))
                    prompt_targets.extend(state.prompt_token_ids[first + 1:first + 1 + count])
                    prompt_spans.append((request_id, count, k))
                    state.num_prompt_logprobs = first + count

        if (self.decode_graphs is not None and max(query_lens) == 1 and not prompt_rows
                and self.decode_graphs.fits(len(query_lens), max(map(len, tables)))):
            logits = self._replay_decode(input_ids, positions, slots, context_lens, tables, pending_at, pending_rows)
            return self._sample(logits, sampled, scheduled.spec_token_ids, [], [])
        ids_t, positions_t, slots_t, rows_t, pending_at_t, pending_rows_t = self._staging.upload(
            input_ids, positions, slots, sample_rows + prompt_rows, pending_at, pending_rows)
        self._fill_pending_inputs(ids_t, pending_at_t, pending_rows_t)
        layout = BatchLayout(query_lens=query_lens, context_lens=context_lens, block_tables=tables,
                             slot_mapping=slots_t, num_tokens=len(input_ids), max_query_len=max(query_lens),
                             max_context_len=max(context_lens))
        metadata = self.attention.build_metadata(layout)
        if self.prefill_graphs is not None and self.prefill_graphs.fits(len(input_ids)):
            hidden = self.prefill_graphs.run(ids_t, positions_t, metadata)
        else:
            hidden = self.model(ids_t, positions_t, AttentionContext(self.attention, metadata))
        logits = self.model.compute_logits(hidden[rows_t])  # [S + P, V] float32
        return self._sample(logits, sampled, scheduled.spec_token_ids, prompt_targets, prompt_spans)

    def _needs_previous_tokens(self, sampled: list[CachedRequestState]) -> bool:
        """Whether a row waits for a token still on its way: penalties count it, a processor follows it."""
        wanting = self._wants_host_tokens
        return bool(wanting) and any(s.num_pending_tokens and s.request_id in wanting for s in sampled)

    def _add(self, state: CachedRequestState) -> None:
        """A request the worker has not held before: the processors are offered it."""
        params = state.sampling_params
        self.logits_processors.add_request(state.request_id, params, state.prompt_token_ids)
        if any(params.penalties_used) or self.logits_processors.follows(state.request_id):
            self._wants_host_tokens.add(state.request_id)
            self._no_proposals.add(state.request_id)
        elif self._device_grammar is not None and self._device_grammar.holds(state.request_id):
            self._no_proposals.add(state.request_id)

    def _replay_decode(self, input_ids: list[int], positions: list[int], slots: list[int],
                       context_lens: list[int], tables: list[list[int]], pending_at: list[int],
                       pending_rows: list[int]) -> torch.Tensor:
        """Logits of a decode-only step from its captured CUDA graph."""
        width = max(map(len, tables))
        ids_t, positions_t, slots_t, pending_at_t, pending_rows_t = self._staging.upload(
            input_ids, positions, slots, pending_at, pending_rows)
        self._fill_pending_inputs(ids_t, pending_at_t, pending_rows_t)
        context_t, flat_tables = self._staging32.upload(context_lens, padded_rows(tables, width))
        return self.decode_graphs.run(ids_t, positions_t, slots_t, context_t, flat_tables.view(len(tables), width))

    def _fill_pending_inputs(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Put the previous step's samples (``rows`` of them) at ``positions`` of this step's input ids."""
        if positions.numel():
            ids[positions] = self._previous_samples[rows]

    def _sample(self, logits: torch.Tensor, rows: list[CachedRequestState], proposals: dict[str, tuple[int, ...]],
                prompt_targets: list[int], prompt_spans: list[tuple[str, int, int]]) -> LaunchedStep:
        """Sample on the device, start copying the results to the host, and return the step's promise."""
        num_sampled = len(rows)
        if self._last_step is not None and self._needs_previous_tokens(rows):
            # its tokens reach the host (and the processors) before this step samples; this step's forward pass
            # is queued already, so the device runs it while the host waits and fills its masks
            self._last_step.result()
        sample_logits = self.logits_processors.apply(logits[:num_sampled], rows)
        out = self.sampler.sample(sample_logits, rows)
        if self._device_grammar is not None:
            self._device_grammar.on_sampled(out.token_ids)
        self._previous_samples = out.token_ids
        self._previous_sample_rows = {s.request_id: row for row, s in enumerate(rows)}  # a request's last row
        requests = list(dict.fromkeys(rows))  # one per request, in row order
        for state in requests:
            state.num_pending_tokens += 1
        device_results = [out.token_ids]
        if out.logprobs is not None:
            device_results += [out.logprob_token_ids, out.logprobs, out.ranks]
        if prompt_spans:
            k = max(top for _, _, top in prompt_spans)
            targets = torch.tensor(prompt_targets, dtype=torch.long).to(self.device, non_blocking=True)
            lp, ids, ranks = top_logprobs(logits[num_sampled:], targets, k)
            device_results += [ids, lp, ranks]
        host_results, wait = self._to_host(device_results)

        def build() -> RunnerOutput:
            lists = [t.tolist() for t in host_results]
            flat_tokens, rest = lists[0], lists[1:]
            flat_logprobs = None
            if out.logprobs is not None:
                flat_logprobs, rest = _zip_logprobs(*rest[:3]), rest[3:]
            prompt_logprobs: dict[str, tuple[TokenLogprobs, ...]] = {}
            if prompt_spans:
                flat, start = _zip_logprobs(*rest), 0
                for request_id, count, _ in prompt_spans:
                    prompt_logprobs[request_id] = tuple(flat[start:start + count])
                    start += count
            token_ids, logprobs, row = [], [], 0
            for state in requests:
                width = state.spec_rows
                # a processor that follows tokens edits only a request's first row right: no proposal is kept
                verified = () if state.request_id in self._no_proposals else proposals.get(state.request_id, ())
                chosen = _accepted(flat_tokens[row:row + width], verified)
                token_ids.append(chosen)
                if flat_logprobs is not None:
                    logprobs.append(tuple(flat_logprobs[row:row + len(chosen)]))
                row += width
                state.num_pending_tokens -= 1
                if self.batch.requests.get(state.request_id) is state:  # not forgotten (nor its id reused) meanwhile
                    state.append_tokens(chosen)
                    self.logits_processors.accept_tokens(state.request_id, chosen)
            return RunnerOutput(tuple(s.request_id for s in requests), tuple(token_ids),
                                None if flat_logprobs is None else tuple(logprobs), prompt_logprobs)

        self._last_step = LaunchedStep(build, wait)
        return self._last_step

    def _to_host(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], None] | None]:
        """Copies on their way to (pinned) host memory, and what to call to wait for them."""
        if self.device.type != "cuda":
            return tensors, None
        copies = [t.to("cpu", non_blocking=True) for t in tensors]
        arrived = torch.cuda.Event()
        arrived.record()
        return copies, arrived.synchronize

    def _forget(self, request_ids: list[str]) -> None:
        """Drop per-request state (seeded generators, token counts, processor state) of finished requests."""
        if request_ids:
            self.sampler.free(request_ids)
            self.logits_processors.remove_requests(request_ids)
            self._wants_host_tokens.difference_update(request_ids)
            self._no_proposals.difference_update(request_ids)


def _extend_slots(slots: list[int], table: list[int], block_size: int, start: int, end: int) -> None:
    """Append the cache slots of positions [start, end): one range per block, not one expression per token."""
    position = start
    while position < end:
        block, offset = divmod(position, block_size)
        count = min(block_size - offset, end - position)
        first = table[block] * block_size + offset
        slots.extend(range(first, first + count))
        position += count


def _accepted(sampled: list[int], proposed: tuple[int, ...]) -> tuple[int, ...]:
    """The tokens a step gives a request: its samples up to and including the first that differs from the
    proposal it verifies (each sample is a true draw given the accepted tokens before it)."""
    for i, token in enumerate(proposed):
        if sampled[i] != token:
            return tuple(sampled[:i + 1])
    return tuple(sampled[:len(proposed) + 1])


def _zip_logprobs(ids: list[list[int]], values: list[list[float]], ranks: list[int]) -> list[TokenLogprobs]:
    """Rows of (token, logprob, rank): the first entry carries the chosen token's rank, the top-k theirs."""
    rows = []
    for row_ids, row_values, rank in zip(ids, values, ranks):
        rows.append(((row_ids[0], row_values[0], rank),)
                    + tuple((t, v, i + 1) for i, (t, v) in enumerate(zip(row_ids[1:], row_values[1:]))))
    return rows


def _warm_token_bitmask(vocab_size: int, device: torch.device) -> None:
    """Compile the guided-decoding kernels: the mask for this vocabulary's float32 logits, and the DFA walk."""
    from pegboard.kernels.dfa_walk import dfa_walk
    from pegboard.kernels.token_bitmask import apply_token_bitmask

    apply_token_bitmask(torch.zeros(1, vocab_size, device=device),
                        torch.full((1, -(-vocab_size // 32)), -1, dtype=torch.int32, device=device),
                        torch.zeros(1, dtype=torch.long, device=device))
    one = torch.ones(1, dtype=torch.long, device=device)
    dfa_walk(one.int(), one, -one, torch.zeros(2, 4, dtype=torch.uint8, device=device), one.int().repeat(2),
             torch.zeros(2, 256, dtype=torch.int32, device=device), torch.zeros(2, dtype=torch.bool, device=device))
