"""The built-in structured-outputs compilers, without a model: regexes, JSON schemas and lark grammars become
byte-level DFAs that accept exactly the texts they should, and what cannot be enforced is refused by name."""

from __future__ import annotations

import json
import re

import pytest

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs.dfa import GrammarTooLargeError, compile_dfa, utf8_sequences
from pegboard.plugins.structured_outputs.json_schema import json_object_regex, schema_to_regex
from pegboard.plugins.structured_outputs.lark_grammar import lark_to_regex
from pegboard.plugins.structured_outputs.regex_parser import parse_regex

jsonschema = pytest.importorskip("jsonschema")


def accepts(node, text: str) -> bool:
    return compile_dfa(node).matches(text.encode())


@pytest.mark.parametrize("pattern, yes, no", [
    (r"a+b", ["ab", "aaab"], ["b", "", "aba"]),
    (r"[^\"\\]*", ["abc", "é中😀", ""], ['"', "\\"]),
    (r"\d{3}-\d{2,}", ["123-45", "123-4567"], ["12-34", "123-4"]),
    (r"(cat|dog)s?", ["cat", "dogs"], ["do", "cats!"]),
    (r"^\w+@\w+\.(com|org)$", ["me@x.org"], ["me@x.net"]),
    (r".{2}", ["é中", "ab"], ["a", "a\n"]),
    (r"[a-c-]+|\u00e9", ["a-b", "é"], ["d"]),
    (r"x{2,3}?", ["xx", "xxx"], ["x", "xxxx"]),
    (r"a?", ["", "a"], ["aa"]),  # every live state accepts: minimization must still tell them apart
    (r"a{,2}", ["", "a", "aa"], ["aaa"]),
    (r"a{3}", ["aaa"], ["aa", "aaaa"]),
])
def test_a_regex_matches_what_python_matches(pattern, yes, no):
    dfa = compile_dfa(parse_regex(pattern))
    for text in yes + no:
        assert dfa.matches(text.encode()) == bool(re.fullmatch(pattern, text)), text


@pytest.mark.parametrize("pattern, feature", [
    (r"a(?=b)", "lookaround"), (r"(a)\1", "backreferences"), (r"\bword", "word boundaries"),
    (r"(?i)abc", "inline flags"), (r"a{3,1}", "bad repetition"), (r"(ab", "missing ')'"), (r"*a", "nothing to repeat"),
])
def test_a_regex_feature_no_dfa_has_is_refused_by_name(pattern, feature):
    with pytest.raises(InvalidParameterError, match=re.escape(feature)):
        parse_regex(pattern)


def test_code_points_become_their_utf8_byte_ranges():
    for lo, hi in [(0, 0x10FFFF), (0x7F, 0x800), (0xFFFF, 0x10000), (0x123, 0x4567)]:
        sequences = utf8_sequences(lo, hi)
        for code in {lo, hi, (lo + hi) // 2}:
            if 0xD800 <= code <= 0xDFFF:
                continue
            data = chr(code).encode()
            assert sum(len(s) == len(data) and all(a <= b <= z for (a, z), b in zip(s, data)) for s in sequences) == 1


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}, "required": ["name", "age"]}


@pytest.mark.parametrize("text, valid", [
    ('{"name": "Al", "age": 33}', True),
    ('{ "name" : "Al" ,\n "age": 120, "tags": ["a", "b"]}', True),
    ('{"name": "Al", "age": 121}', False),  # maximum
    ('{"age": 3, "name": "Al"}', False),  # properties come in the schema's order
    ('{"name": "", "age": 3}', False),  # minLength
    ('{"name": "Al"}', False),  # required
    ('{"name": "Al", "age": 3, "extra": 1}', False),  # properties given: additionalProperties defaults to false
    ('{"name": "Al", "age": 3, "tags": ["a", "b", "a"]}', False),  # maxItems
    ('{"name": "A\\"l", "age": 007}', False),  # no leading zeros in JSON
])
def test_a_json_schema_accepts_its_texts_in_property_order(text, valid):
    assert accepts(schema_to_regex(SCHEMA), text) == valid
    if valid:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_whitespace_between_tokens_is_a_bounded_run():
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2,
              "maxItems": 2}
    for pretty in (json.dumps([1, 2], indent=4), json.dumps({"a": {"b": [1]}}, indent=4), "[ \t1,2 ]"):
        assert accepts(schema_to_regex(schema) if pretty[0] == "[" else json_object_regex(), pretty), pretty
    # greedy SmolLM2 wrote "[" then newlines, and then tabs, to max_tokens when these were allowed
    for endless in ("[\n\n1,2]", "[\n" + "\t" * 13 + "1,2]", "[   1,2]", "[1,\n \n2]"):
        assert not accepts(schema_to_regex(schema), endless), endless
    assert not accepts(json_object_regex(), '{\n\n"a": 1}')


@pytest.mark.parametrize("schema, yes, no", [
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, ["0.5", "1", "1.000"], ["0", "0.0", "1.01", "-0.5"]),
    ({"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3}, ["-2", "0", "2"], ["-3", "3", "-0"]),
    ({"type": "string", "pattern": "^[A-Z]{2}$"}, ['"AB"'], ['"ABC"', '"ab"']),
    ({"type": "string", "pattern": "cat"}, ['"a cat!"', '"cat"'], ['"dog"']),  # unanchored: contains
    ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"2024-13-01"']),
    ({"enum": ["x", 1, None]}, ['"x"', "1", "null"], ['"y"', "2"]),
    ({"const": {"a": [1, 2]}}, ['{"a":[1,2]}'], ['{"a":[1]}']),
    ({"anyOf": [{"type": "boolean"}, {"type": "null"}]}, ["true", "null"], ["0"]),
    ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
     ['[1, "a"]'], ['[1]', '[1, "a", 2]']),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, ['{}', '{"a": 1, "b": 2}'], ['{"a": "x"}']),
    ({"$defs": {"n": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
      "$ref": "#/$defs/n"}, ['{"c": [{"c": []}, {}]}'], ['{"c": [1]}']),
])
def test_json_schema_keywords_are_enforced(schema, yes, no):
    node = schema_to_regex(schema)
    for text in yes:
        assert accepts(node, text), text
        jsonschema.validate(json.loads(text), schema)
    for text in no:
        assert not accepts(node, text), text


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "minProperties": 1}, "keyword 'minProperties' is not supported"),
    ({"type": "string", "format": "hostname"}, "format 'hostname' is not supported"),
    ({"type": "integer", "multipleOf": 2}, "keyword 'multipleOf'"),
    ({"type": "number", "minimum": 0.5}, "number bounds must be whole numbers"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf with more than one schema"),
    ({"$ref": "https://example.com/s.json"}, "only local $refs"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "unsatisfiable"),
    ({"enum": []}, "unsatisfiable"),
    ({"type": "string", "enum": [1, 2]}, "unsatisfiable"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "can match the same text"),
    ({"type": "objekt"}, "type must be one of"),
])
def test_what_a_grammar_cannot_enforce_is_refused_by_name(schema, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        schema_to_regex(schema)


def test_json_object_is_any_object_nested_to_the_depth_bound():
    node = json_object_regex()
    assert accepts(node, '{"a": [1, {"b": null}], "c": "d"}') and accepts(node, "{}")
    assert not accepts(node, "[1]") and not accepts(node, '{"a": }')
    assert accepts(node, '{"a": {"b": {"c": 1}}}') and not accepts(node, '{"a": {"b": {"c": {"d": 1}}}}')  # depth 3


JSON_GRAMMAR = r"""
start: value
?value: object | array | STRING | NUMBER | "true" | "false" | "null"
array: "[" [value ("," value)*] "]"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
%import common.ESCAPED_STRING -> STRING
%import common.SIGNED_NUMBER -> NUMBER
%import common.WS
%ignore WS
"""


def test_a_lark_grammar_is_inlined_with_loops_for_star_and_plus():
    node = lark_to_regex(JSON_GRAMMAR)
    assert accepts(node, '[1, 2, {"a": [true]}]') and accepts(node, '{"x" : "y\\"z"}')
    assert not accepts(node, "[1,]") and not accepts(node, '{"a":1')
    arithmetic = lark_to_regex('start: term (("+"|"-") term)*\nterm: NUMBER | "(" start ")"\n%import common.NUMBER')
    assert accepts(arithmetic, "(1+2)-((3))") and not accepts(arithmetic, "(1+")


@pytest.mark.parametrize("grammar, message", [
    ('start: ("a"', "lark could not load it"),
    ('start: "a" undefined_rule', "lark could not load it"),
    ('start: /a(?=b)/', "lookaround"),
    ("start: start", "unsatisfiable"),
    ("", "non-empty string"),
])
def test_a_lark_grammar_that_cannot_be_a_dfa_is_refused(grammar, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        lark_to_regex(grammar)


def test_a_constraint_past_the_size_cap_is_refused():
    with pytest.raises(GrammarTooLargeError, match="too large"):
        compile_dfa(parse_regex("(a|b)*a(a|b){16}"))  # 2^16 DFA states


def test_the_mask_table_allows_exactly_the_tokens_whose_bytes_stay_alive():
    """The trie walk against a plain walk of every token from every state."""
    import numpy as np

    from pegboard.plugins.structured_outputs.dfa import DEAD
    from pegboard.plugins.structured_outputs.vocabulary import Vocabulary, _trie, mask_table

    rng = np.random.default_rng(0)
    alphabet = b'{}[]",: ab1\\\xc3\xa9'
    pieces = [b""] + [bytes(rng.choice(list(alphabet), size=rng.integers(1, 5))) for _ in range(300)]
    vocabulary = Vocabulary(tuple(pieces), *_trie(pieces))
    dfa = compile_dfa(schema_to_regex({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}))
    table = mask_table(dfa, vocabulary)
    for state in range(dfa.num_states):
        for token, piece in enumerate(pieces):
            walked = state
            for byte in piece:
                walked = dfa.transitions[walked, byte]
            expected = bool(piece) and walked != DEAD and state != DEAD
            assert bool(table[state, token // 32] >> (token % 32) & 1) == expected, (state, piece)


def _random_regexes():
    from hypothesis import strategies as st

    atoms = st.sampled_from(["a", "b", "[ab]", "[^a]", ".", "é", "\\d"])
    quantifiers = st.sampled_from(["", "?", "*", "+", "{2}", "{0,2}", "{1,}", "{,1}"])

    def extend(inner):
        return st.one_of(st.tuples(inner, inner).map("".join), st.tuples(inner, inner).map("|".join),
                         st.tuples(inner, quantifiers).map(lambda p: f"({p[0]}){p[1]}"))

    return st.recursive(st.tuples(atoms, quantifiers).map("".join), extend, max_leaves=6)


def test_random_regexes_match_what_python_matches():
    """A property test: random regexes over a small alphabet, random texts, the DFA against Python's re."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, database=None)
    @given(_random_regexes(), st.lists(st.text(alphabet="ab1é\n", max_size=6), min_size=1, max_size=8))
    def check(pattern, texts):
        dfa = compile_dfa(parse_regex(pattern))
        for text in texts:
            assert dfa.matches(text.encode()) == bool(re.fullmatch(pattern, text)), (pattern, text)

    check()


def test_a_spec_compiled_by_two_threads_at_once_is_compiled_once():
    import threading
    import time

    from pegboard.plugins.structured_outputs.grammars import _LRU

    cache, calls = _LRU(4), []

    def make():
        calls.append(1)
        time.sleep(0.05)
        return "compiled"

    threads = [threading.Thread(target=cache.get_or_make, args=("spec", make)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and cache.get_or_make("spec", make) == "compiled"


def test_a_spec_that_fails_to_compile_fails_each_time_and_leaves_nothing_behind():
    from pegboard.plugins.structured_outputs.grammars import _LRU

    cache = _LRU(4)

    def fail():
        raise ValueError("unsatisfiable")

    for _ in range(3):
        with pytest.raises(ValueError, match="unsatisfiable"):
            cache.get_or_make("bad", fail)
    assert cache._making == {} and cache.get_or_make("bad", lambda: "fixed") == "fixed"


def test_a_schema_is_converted_once_however_many_requests_carry_it(monkeypatch):
    from pegboard.plugins.structured_outputs import grammars

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}}
    calls = []
    grammar = grammars.JsonSchemaGrammar()
    real = grammar.to_regex
    monkeypatch.setattr(grammar, "to_regex", lambda spec: calls.append(1) or real(spec))
    for _ in range(5):
        grammar.validate(schema)
    grammar.dfa(schema)
    assert calls == [1]
