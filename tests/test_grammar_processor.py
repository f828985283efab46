"""GrammarProcessor.apply: one step's masks, whichever way each matcher hands over its allowed tokens (a list, its
own bitmask row, a row of a table shared by one compiled grammar), with EOS allowed exactly where a grammar can end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pegboard.core.grammar_processor import GrammarProcessor, pack_bits
from pegboard.core.sampling_params import SamplingParams

VOCAB, EOS = 70, 2


def compiled_regexes(pieces: list[bytes], regexes: dict[str, str]) -> dict:
    """{name: CompiledGrammar} of each regex over a vocabulary whose token i is pieces[i] (the built-in backend's)."""
    from pegboard.plugins.structured_outputs.dfa import compile_dfa
    from pegboard.plugins.structured_outputs.matcher import CompiledGrammar
    from pegboard.plugins.structured_outputs.regex_parser import parse_regex
    from pegboard.plugins.structured_outputs.vocabulary import Vocabulary, _trie, mask_table

    vocabulary = Vocabulary(tuple(pieces), *_trie(pieces))
    compiled = {}
    for name, regex in regexes.items():
        dfa = compile_dfa(parse_regex(regex))
        compiled[name] = CompiledGrammar(dfa, vocabulary, torch.from_numpy(mask_table(dfa, vocabulary)),
                                         dfa.transitions.tolist(), dfa.accepting.tolist())
    return compiled


class ListMatcher:
    """Allows a fixed token list."""

    supports_bitmask = False

    def __init__(self, allowed: list[int], finished: bool = False) -> None:
        self.allowed, self.finished = allowed, finished

    def allowed_token_ids(self) -> list[int]:
        return self.allowed

    def accept(self, token_id: int) -> None:
        pass

    def is_finished(self) -> bool:
        return self.finished


class RowMatcher(ListMatcher):
    """Writes its own bitmask row."""

    supports_bitmask = True

    def fill_bitmask(self, words: torch.Tensor) -> None:
        words.copy_(bits(self.allowed))


class TableMatcher(RowMatcher):
    """Hands over a row of a table that other matchers share."""

    supports_mask_table = True
    supports_byte_dfa = False

    def __init__(self, table: torch.Tensor, state: int, allowed: list[int], finished: bool = False) -> None:
        super().__init__(allowed, finished)
        self.table, self.state = table, state

    def mask_row(self) -> tuple[torch.Tensor, int]:
        return self.table, self.state


def bits(allowed: list[int]) -> torch.Tensor:
    row = torch.zeros(-(-VOCAB // 32) * 32, dtype=torch.bool)
    row[allowed] = True
    return pack_bits(row)


class Grammars:
    """A registry of one grammar kind whose compile hands out prepared matchers in order."""

    owners = {"fake": "test"}

    def __init__(self, matchers: list) -> None:
        self.matchers = iter(matchers)

    def __contains__(self, name: str) -> bool:
        return name == "fake"

    def names(self) -> list[str]:
        return ["fake"]

    def get(self, name: str):
        return self

    def compile(self, spec, *, vocab_size: int, tokenizer=None):
        return next(self.matchers)


def test_every_kind_of_matcher_masks_its_own_row_and_eos_follows_is_finished():
    states = [[5, 6, 7], [8, 9], [10, 11, 12, 40], [60, 69]]  # the allowed tokens of each table row
    table_a = torch.stack([bits(s) for s in states])
    table_b = torch.stack([bits([33, 34]), bits([35])])
    matchers = {
        "free1": None,
        "a0": TableMatcher(table_a, 2, states[2]),
        "list": ListMatcher([3, 4], finished=True),
        "a1": TableMatcher(table_a, 0, states[0], finished=True),
        "free2": None,
        "b": TableMatcher(table_b, 1, [35]),
        "row": RowMatcher([50, 51], finished=True),
        "a2": TableMatcher(table_a, 2, states[2]),
        "a3": TableMatcher(table_a, 3, states[3], finished=True),
    }
    guided = {rid: m for rid, m in matchers.items() if m is not None}
    processor = GrammarProcessor(Grammars(list(guided.values())), vocab_size=VOCAB, device=torch.device("cpu"),
                                 eos_token_id=lambda rid: EOS)
    for rid in matchers:
        params = SamplingParams(extra={"grammar": {"kind": "fake", "spec": {}}}) if rid in guided else SamplingParams()
        assert processor.add_request(rid, params, [1]) == (rid in guided)
    logits = processor.apply(torch.zeros(len(matchers), VOCAB), list(matchers))
    for row, (rid, matcher) in enumerate(matchers.items()):
        allowed = set(range(VOCAB)) if matcher is None else set(matcher.allowed) | ({EOS} if matcher.finished else set())
        assert set(torch.isfinite(logits[row]).nonzero()[:, 0].tolist()) == allowed, rid


def test_a_batch_of_one_grammar_gathers_its_rows_and_eos_may_be_any_bit_of_a_word():
    eos = 63  # bit 31 of word 1: the sign bit of an int32 word
    states = [[5, 6], [40], [62]]
    table = torch.stack([bits(s) for s in states])
    matchers = {f"r{i}": TableMatcher(table, i % 3, states[i % 3], finished=i % 2 == 0) for i in range(5)}
    processor = GrammarProcessor(Grammars(list(matchers.values())), vocab_size=VOCAB, device=torch.device("cpu"),
                                 eos_token_id=lambda rid: eos)
    for rid in matchers:
        processor.add_request(rid, SamplingParams(extra={"grammar": {"kind": "fake", "spec": {}}}), [1])
    logits = processor.apply(torch.zeros(len(matchers), VOCAB), list(matchers))
    for row, (rid, matcher) in enumerate(matchers.items()):
        allowed = set(matcher.allowed) | ({eos} if matcher.finished else set())
        assert set(torch.isfinite(logits[row]).nonzero()[:, 0].tolist()) == allowed, rid


def test_on_the_device_each_request_follows_its_grammar_as_a_host_matcher_would():
    """DeviceGrammarProcessor (states in a tensor, walked after sampling) against one host DFAMatcher per request:
    two grammars in one batch, rows that change from step to step and rows that stay (the last step's groups are
    reused), a request with two rows (a proposal's), EOS where the grammar can end, a request that leaves and an id
    that comes back, and more requests than its first state slots."""
    import random

    from pegboard.core.device_grammar_processor import DeviceGrammarProcessor
    from pegboard.kernels.reference import dfa_walk_ref
    from pegboard.plugins.structured_outputs.matcher import DFAMatcher

    pieces = [b"", b"", b""] + [bytes([c]) for c in b"ab,;"] + [b"ab", b"ba", b"a,", b";;"] + [b""] * (VOCAB - 11)
    compiled = compiled_regexes(pieces, {"list": "((a|b){1,4}[,;])*", "pairs": "(ab|ba)+;?"})

    class Compiles(Grammars):
        def compile(self, spec, *, vocab_size, tokenizer=None):
            return DFAMatcher(compiled[spec["grammar"]])

    processor = DeviceGrammarProcessor(Compiles([]), vocab_size=VOCAB, device="cpu", eos_token_id=lambda rid: EOS,
                                       walk=dfa_walk_ref)
    def guided(rid: str) -> SamplingParams:  # odd-numbered requests follow the second grammar
        spec = {"grammar": "pairs" if int(rid[1:]) % 2 else "list"}
        return SamplingParams(extra={"grammar": {"kind": "fake", "spec": spec}})
    reference: dict[str, DFAMatcher] = {}
    rng = random.Random(0)
    for i in range(300):  # more than the 256 slots it starts with
        assert processor.add_request(f"w{i}", guided(f"w{i}"), [1])
    for i in range(300):
        processor.remove_request(f"w{i}")
    reused = 0
    for step in range(60):
        last_groups = processor._plan[1]
        if step % 7 == 3:
            gone = rng.choice(sorted(reference))
            processor.remove_request(gone)
            del reference[gone]
        for rid in (f"r{i}" for i in range(6)):
            if rid not in reference:
                assert processor.add_request(rid, guided(rid), [1])
                reference[rid] = DFAMatcher(compiled[guided(rid).extra["grammar"]["spec"]["grammar"]])
        order = [rid for rid in sorted(reference) if not (step % 5 == 4 and rid == "r2")]  # r2 sits out some steps
        rows = [rid for rid in order for _ in range(2 if rid == "r1" and step % 6 == 1 else 1)]  # r1: a proposal row
        logits = processor.apply(torch.zeros(len(rows), VOCAB), rows)
        reused += processor._plan[1] is last_groups
        sampled = []
        for row, rid in enumerate(rows):
            allowed = set(torch.isfinite(logits[row]).nonzero()[:, 0].tolist())
            expected = set(reference[rid].allowed_token_ids()) | ({EOS} if reference[rid].is_finished() else set())
            assert allowed == expected, (step, rid)
            choices = sorted(allowed)
            sampled.append(rng.choice(choices) if choices else EOS)
        processor.on_sampled(torch.tensor(sampled))
        for rid in order:
            token = sampled[rows.index(rid)]  # the request's first row
            if not (token == EOS and reference[rid].is_finished()):
                reference[rid].accept(token)
            if reference[rid].state == 0:  # dead (nothing allowed any more): the request starts over
                processor.remove_request(rid)
                del reference[rid]
    assert reused >= 10  # steps whose rows were the last step's, with no request come or gone
    copies = [on_device for _, on_device, _ in processor._on_device.values()]
    assert len(copies) == 2 and copies[0].token_bytes is copies[1].token_bytes  # one vocabulary, one copy
    for rid in list(reference):
        processor.remove_request(rid)
    assert not processor._on_device and not processor._bytes_on_device  # freed with their last request


def test_on_the_device_an_id_that_comes_back_with_another_grammar_follows_the_new_one():
    """The same rows as the last step, but the request behind an id left and came back with another grammar: the
    step's masks are the new grammar's, not the last step's groups reused."""
    from pegboard.core.device_grammar_processor import DeviceGrammarProcessor
    from pegboard.plugins.structured_outputs.matcher import DFAMatcher

    pieces = [b"", b"", b"", b"a", b"b", b";"] + [b""] * (VOCAB - 6)
    compiled = compiled_regexes(pieces, {"ab;": "ab;", "b;": "b;"})

    class Compiles(Grammars):
        def compile(self, spec, *, vocab_size, tokenizer=None):
            return DFAMatcher(compiled[spec["regex"]])

    def allowed(processor) -> set[int]:
        logits = processor.apply(torch.zeros(1, VOCAB), ["r"])
        return set(torch.isfinite(logits[0]).nonzero()[:, 0].tolist())

    processor = DeviceGrammarProcessor(Compiles([]), vocab_size=VOCAB, device="cpu", eos_token_id=lambda rid: EOS)
    regex = lambda r: SamplingParams(extra={"grammar": {"kind": "fake", "spec": {"regex": r}}})  # noqa: E731
    assert processor.add_request("r", regex("ab;"), [1])
    assert allowed(processor) == {3}
    processor.on_sampled(torch.tensor([3]))
    assert allowed(processor) == {4}
    processor.on_sampled(torch.tensor([4]))
    processor.remove_request("r")
    assert processor.add_request("r", regex("b;"), [1])
    assert allowed(processor) == {4}


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_eos_is_allowed_exactly_where_the_grammar_can_end_even_where_its_bytes_would_be(on_device):
    """A vocabulary whose EOS is an ordinary token (here the byte "a"): the grammar "a;" allows "a" first, yet EOS
    is forbidden until the grammar can end, and then allowed."""
    from pegboard.core.device_grammar_processor import DeviceGrammarProcessor
    from pegboard.plugins.structured_outputs.matcher import DFAMatcher

    pieces = [b"", b"", b"a", b"a", b";"] + [b""] * (VOCAB - 5)  # EOS (2) is the byte "a", as token 3 is
    compiled = compiled_regexes(pieces, {"a;": "a;"})["a;"]

    class Compiles(Grammars):
        def compile(self, spec, *, vocab_size, tokenizer=None):
            return DFAMatcher(compiled)

    kind = DeviceGrammarProcessor if on_device else GrammarProcessor
    processor = kind(Compiles([]), vocab_size=VOCAB, device=torch.device("cpu"), eos_token_id=lambda rid: EOS)
    assert processor.add_request("r", SamplingParams(extra={"grammar": {"kind": "fake", "spec": {}}}), [1])
    for token, allowed in ((3, {3}), (4, {4}), (None, {EOS})):
        logits = processor.apply(torch.zeros(1, VOCAB), ["r"])
        assert set(torch.isfinite(logits[0]).nonzero()[:, 0].tolist()) == allowed
        if token is not None and on_device:
            processor.on_sampled(torch.tensor([token]))
        elif token is not None:
            processor.accept_tokens("r", [token])


def test_a_matcher_the_device_cannot_follow_is_compiled_once_and_followed_on_the_host():
    """Beside a DeviceGrammarProcessor (as on CUDA), a matcher without a ByteDFA (an optional backend's) goes to the
    host GrammarProcessor as compiled: the grammar compiles it once (its fake hands out each matcher only once)."""
    from pegboard.core.device_grammar_processor import DeviceGrammarProcessor
    from pegboard.core.logits_processors import LogitsProcessors

    grammars = Grammars([ListMatcher([3, 4]), RowMatcher([7], finished=True)])
    device = DeviceGrammarProcessor(grammars, vocab_size=VOCAB, device="cpu", eos_token_id=lambda rid: EOS)
    host = GrammarProcessor(grammars, vocab_size=VOCAB, device=torch.device("cpu"), eos_token_id=lambda rid: EOS,
                            defer_to=device)
    processors = LogitsProcessors([device, host])
    for rid in ("list", "row"):
        processors.add_request(rid, SamplingParams(extra={"grammar": {"kind": "fake", "spec": {}}}), [1])
    assert set(host.matchers) == {"list", "row"} and not device.holds("list") and not device.declined
    logits = processors.apply(torch.zeros(2, VOCAB), [SimpleNamespace(request_id=rid) for rid in ("list", "row")])
    assert [set(torch.isfinite(row).nonzero()[:, 0].tolist()) for row in logits] == [{3, 4}, {7, EOS}]
