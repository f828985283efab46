"""The default Sampler: min_tokens, logit bias, penalties, greedy and (seeded) random sampling, logprobs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pegboard.core.request import Request
from pegboard.core.logprobs import top_logprobs
from pegboard.plugins.sampling_ops import (NEG_INF, apply_min_p, apply_penalties, apply_top_k_top_p,
                                           exponential_race, race_noise_size)

_SEED_MASK = 2**64 - 1  # torch generators take 64-bit seeds
# Divisors must stay finite and non-zero in float32: temperatures and repetition penalties are clamped to this.
_FP32_TINY, _FP32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38


@dataclass
class SamplerOutput:
    """One step's choices as device tensors; the runner brings them to the host in one go."""

    token_ids: torch.Tensor  # [N] int64
    logprobs: torch.Tensor | None = None  # [N, 1 + K] float32: the sampled token, then the top K
    logprob_token_ids: torch.Tensor | None = None  # [N, 1 + K] int64
    ranks: torch.Tensor | None = None  # [N] int64: the sampled token's rank


class StepPlan:
    """What one step's requests ask for, read in a single pass into plain lists."""

    def __init__(self, requests: list[Request], vocab_size: int) -> None:
        self.num_rows = len(requests)
        self.num_logprobs: int | None = None  # K, the most top logprobs any row asks for
        self.banned: tuple[list[int], list[int]] = ([], [])  # (rows, tokens) under min_tokens
        self.bias: tuple[list[int], list[int], list[float]] = ([], [], [])  # (rows, tokens, biases)
        self.penalized_rows: list[int] = []
        self.penalized: list[Request] = []
        self.penalties: list[tuple[float, float, float]] = []  # per penalized row: repetition, presence, frequency
        self.penalties_used = [False, False, False]  # whether any row uses each of the three
        self.random_rows: list[int] = []  # rows that sample; the others take the argmax
        self.temperature: list[float] = []  # per random row
        self.log_min_p: list[float] = []  # per random row, -inf = off
        self.uses_min_p = False
        self.filtered: list[int] = []  # positions among the random rows with top_k or top_p
        self.top_k: list[int] = []  # per filtered row, vocab_size = off
        self.top_p: list[float] = []  # per filtered row, 1.0 = off
        self.seeded: list[tuple[int, Request]] = []  # (position among the random rows, request)
        self.unseeded = False  # some random row draws from the sampler's own generator
        for row, request in enumerate(requests):
            sp = request.sampling_params
            if sp.logprobs is not None:
                self.num_logprobs = max(self.num_logprobs or 0, sp.logprobs)
            if request.num_output_tokens + request.num_pending_tokens < sp.min_tokens:  # counts before this one
                eos = [] if request.eos_token_id is None or sp.ignore_eos else [request.eos_token_id]
                tokens = [t for t in eos + sp.stop_token_ids if t < vocab_size]
                self.banned[0].extend([row] * len(tokens))
                self.banned[1].extend(tokens)
            for token, bias in sp.logit_bias.items():
                if 0 <= token < vocab_size:
                    self.bias[0].append(row)
                    self.bias[1].append(token)
                    self.bias[2].append(bias)
            used = sp.penalties_used
            if any(used):
                self.penalized_rows.append(row)
                self.penalized.append(request)
                repetition = min(max(sp.repetition_penalty, _FP32_TINY), _FP32_MAX)
                self.penalties.append((repetition, sp.presence_penalty, sp.frequency_penalty))
                self.penalties_used = [a or b for a, b in zip(self.penalties_used, used)]
            if not sp.greedy:
                self._add_random(row, request, vocab_size)

    def _add_random(self, row: int, request: Request, vocab_size: int) -> None:
        sp = request.sampling_params
        position = len(self.random_rows)
        self.random_rows.append(row)
        self.temperature.append(min(sp.temperature, _FP32_MAX))
        self.log_min_p.append(math.log(sp.min_p) if sp.min_p > 0 else NEG_INF)
        self.uses_min_p |= sp.min_p > 0
        if sp.top_k or sp.top_p < 1.0:
            self.filtered.append(position)
            self.top_k.append(min(sp.top_k, vocab_size) or vocab_size)
            self.top_p.append(sp.top_p)
        if sp.seed is None:
            self.unseeded = True
        else:
            self.seeded.append((position, request))


class TokenCounts:
    """Per-request token counts on the device (one slot each), updated with only the new tokens each step."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.output = torch.zeros(0, vocab_size, device=device)  # [S, V] float counts of output tokens
        self.in_prompt = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)  # [S, V]
        self.slots: dict[str, int] = {}
        self.counted: dict[str, int] = {}  # request id -> output tokens counted so far
        self.free_slots: list[int] = []

    def update(self, requests: list[Request]) -> torch.Tensor:
        """Count what each request gained since the last call; returns the requests' slots [M]."""
        fresh, slots = [], []
        prompt_slots, prompt_tokens, output_slots, output_tokens = [], [], [], []
        for request in requests:
            rid = request.request_id
            slot, counted = self.slots.get(rid), self.counted.get(rid, 0)
            if slot is None or request.num_output_tokens < counted:  # new (or rewound): count from scratch
                slot = self._take(rid) if slot is None else slot
                fresh.append(slot)
                prompt_slots.extend([slot] * request.num_prompt_tokens)
                prompt_tokens.extend(request.prompt_token_ids)
                counted = 0
            new = request.output_token_ids[counted:]
            output_slots.extend([slot] * len(new))
            output_tokens.extend(new)
            self.counted[rid] = request.num_output_tokens
            slots.append(slot)
        device = self.output.device
        if fresh:
            fresh_t = _to(fresh, torch.long, device)
            self.output.index_fill_(0, fresh_t, 0.0)
            self.in_prompt.index_fill_(0, fresh_t, False)
        if prompt_tokens:
            self.in_prompt.index_put_((_to(prompt_slots, torch.long, device), _to(prompt_tokens, torch.long, device)),
                                      self.in_prompt.new_ones(()))
        if output_tokens:
            ones = torch.ones(len(output_tokens), device=device)
            self.output.index_put_((_to(output_slots, torch.long, device), _to(output_tokens, torch.long, device)),
                                   ones, accumulate=True)
        return _to(slots, torch.long, device)

    def free(self, request_ids: list[str]) -> None:
        """Give back the slots of finished requests."""
        for rid in request_ids:
            slot = self.slots.pop(rid, None)
            self.counted.pop(rid, None)
            if slot is not None:
                self.free_slots.append(slot)

    def _take(self, rid: str) -> int:
        """A free slot for ``rid``, doubling the buffers when none is left."""
        if not self.free_slots:
            old = self.output.shape[0]
            new = max(8, 2 * old)
            self.output = torch.cat([self.output, self.output.new_zeros(new - old, self.output.shape[1])])
            self.in_prompt = torch.cat([self.in_prompt, self.in_prompt.new_zeros(new - old, self.in_prompt.shape[1])])
            self.free_slots.extend(range(new - 1, old - 1, -1))
        slot = self.slots[rid] = self.free_slots.pop()
        return slot


class Sampler:
    """Chooses one token per row, batched on the device; keeps per-request generators and token counts."""

    def __init__(self, vocab_size: int, device: torch.device | str, seed: int) -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed & _SEED_MASK)
        self.request_generators: dict[str, torch.Generator] = {}
        self.counts = TokenCounts(vocab_size, self.device)

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        """Choose each row's token; logprobs (when asked for) are of the logits as given."""
        # logits: [N, V] (computed in float32), row i belongs to requests[i]
        logits = logits.float()
        plan = StepPlan(requests, self.vocab_size)
        token_ids = self._choose(self._process(logits, plan), plan)  # [N]
        if plan.num_logprobs is None:
            return SamplerOutput(token_ids)
        return SamplerOutput(token_ids, *top_logprobs(logits, token_ids, plan.num_logprobs))

    def processed_logits(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """The logits after min_tokens bans, logit bias and penalties: what greedy rows take the argmax of."""
        return self._process(logits.float(), StepPlan(requests, self.vocab_size))

    def free(self, request_ids: list[str]) -> None:
        """Forget finished requests' generators and token counts."""
        for rid in request_ids:
            self.request_generators.pop(rid, None)
        self.counts.free(request_ids)

    def _process(self, logits: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """Bans, bias and penalties; ``logits`` itself when no row asks for any, else a copy."""
        x = logits
        if plan.banned[0] or plan.bias[0]:
            x = logits.clone()
            if plan.banned[0]:
                rows, tokens = plan.banned
                x.index_put_((self._long(rows), self._long(tokens)), x.new_full((), NEG_INF))
            if plan.bias[0]:
                rows, tokens, biases = plan.bias
                x.index_put_((self._long(rows), self._long(tokens)), self._float(biases), accumulate=True)
        return self._penalize(x, logits, plan) if plan.penalized else x

    def _penalize(self, x: torch.Tensor, logits: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """Apply the penalties to the rows that ask for any; a penalty no row uses costs nothing."""
        slots = self.counts.update(plan.penalized)  # [M]
        repetition, presence, frequency = (column if used else None for column, used in
                                           zip(self._float(plan.penalties).unbind(1), plan.penalties_used))
        everyone = len(plan.penalized) == plan.num_rows
        rows = None if everyone else self._long(plan.penalized_rows)
        in_prompt = self.counts.in_prompt[slots] if repetition is not None else None
        penalized = apply_penalties(x if everyone else x[rows], self.counts.output[slots], in_prompt,
                                    repetition, presence, frequency)
        if everyone:
            return penalized
        if x is logits:
            x = logits.clone()
        x[rows] = penalized
        return x

    def _choose(self, x: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """Greedy rows take the argmax; random rows race their filtered probabilities against noise."""
        # x: [N, V]
        if not plan.random_rows:
            return x.argmax(-1)
        everyone = len(plan.random_rows) == plan.num_rows
        rows = None if everyone else self._long(plan.random_rows)
        temperature = self._float(plan.temperature)[:, None]  # [R, 1]
        scaled = x / temperature if everyone else x[rows].div_(temperature)  # [R, V], our own copy
        # a penalty or a small temperature may overflow: +inf stays the most likely, NaN (a broken model) never wins
        scaled.nan_to_num_(nan=NEG_INF, posinf=_FP32_MAX, neginf=NEG_INF)
        if plan.uses_min_p:
            apply_min_p(scaled, self._float(plan.log_min_p))
        if plan.filtered:
            self._top_k_top_p(scaled, plan)
        noise = self._uniform(race_noise_size(scaled.shape[1]), plan)  # [R, noise]
        sampled = exponential_race(scaled.softmax(-1), noise)  # [R]
        if everyone:
            return sampled
        token_ids = x.argmax(-1)
        token_ids[rows] = sampled
        return token_ids

    def _top_k_top_p(self, scaled: torch.Tensor, plan: StepPlan) -> None:
        """Filter the random rows that ask for top_k or top_p, in place."""
        everyone = len(plan.filtered) == len(plan.random_rows)
        rows = None if everyone else self._long(plan.filtered)
        top_p = self._float(plan.top_p) if any(p < 1.0 for p in plan.top_p) else None
        part = scaled if everyone else scaled[rows]
        apply_top_k_top_p(part, self._long(plan.top_k), top_p, head=max(plan.top_k))
        if not everyone:
            scaled[rows] = part

    def _uniform(self, size: int, plan: StepPlan) -> torch.Tensor:
        """U[0, 1) noise for the race: seeded rows from their own generators, the rest from ours."""
        buffer = torch.empty(len(plan.random_rows), size, device=self.device)  # [R, size]
        if plan.unseeded:
            buffer.uniform_(generator=self.generator)
        for position, request in plan.seeded:
            buffer[position].uniform_(generator=self._generator_of(request))
        return buffer

    def _generator_of(self, request: Request) -> torch.Generator:
        generator = self.request_generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(request.sampling_params.seed & _SEED_MASK)
            self.request_generators[request.request_id] = generator
        return generator

    def _long(self, values: list) -> torch.Tensor:
        return _to(values, torch.long, self.device)

    def _float(self, values: list) -> torch.Tensor:
        return _to(values, torch.float32, self.device)


def _to(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One host list -> one device tensor, copied from pinned memory without waiting for the device."""
    pinned = device.type == "cuda"
    return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(device, non_blocking=True)
