"""Lark EBNF -> regex_ast: the grammar is read by lark's own loader (imports, templates, ``?``/``*``/``+``
expanded to rules), then every rule is inlined into one regular expression.

A rule that recurses only at its left or right end (what lark makes of ``x*`` and ``x+``, or ``list: list "," x |
x``) becomes a loop; any other recursion is followed ``RECURSION_DEPTH`` rule entries deep, where the branch
ends. ``%ignore`` terminals may appear between any two symbols. Terminals are taken as the language of their
regex (lazy quantifiers as greedy); lark's ``common.ESCAPED_STRING`` (a lookbehind) is the equivalent regex.
"""

from __future__ import annotations

from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs import regex_ast as ra
from pegboard.plugins.structured_outputs.regex_parser import RegexError, parse_regex

RECURSION_DEPTH = 8
# lark's common.ESCAPED_STRING as compiled by lark, and the same language without a lookbehind
ESCAPED_STRING = '".*?(?<!\\\\)(\\\\\\\\)*?"'
ESCAPED_STRING_EQUIVALENT = r'"([^"\\\n]|\\[^\n])*"'


class LarkGrammarError(InvalidParameterError):
    """A lark grammar that cannot be loaded or turned into a regular language."""

    def __init__(self, message: str) -> None:
        super().__init__(f"grammar: {message}", param="grammar")


def _ignore_case(node: ra.Node) -> ra.Node:
    """The same tree with ASCII letters matching either case (lark's ``i`` flag)."""
    if isinstance(node, ra.Chars):
        extra = []
        for lo, hi in node.ranges:
            for a, b, shift in ((65, 90, 32), (97, 122, -32)):
                if max(lo, a) <= min(hi, b):
                    extra.append((max(lo, a) + shift, min(hi, b) + shift))
        return ra.chars([*node.ranges, *extra])
    if isinstance(node, ra.Concat):
        return ra.seq(*(_ignore_case(i) for i in node.items))
    if isinstance(node, ra.Alt):
        return ra.alt(*(_ignore_case(i) for i in node.items))
    return ra.repeat(_ignore_case(node.item), node.low, node.high)


def _terminal(definition: Any) -> ra.Node:
    pattern = definition.pattern
    flags = set(pattern.flags) - {"i"}
    if flags:
        raise LarkGrammarError(f"terminal {definition.name}: regex flags {''.join(sorted(flags))!r} are not supported")
    if type(pattern).__name__ == "PatternStr":
        node = ra.literal(pattern.value) if pattern.value else ra.EMPTY
    else:
        text = ESCAPED_STRING_EQUIVALENT if pattern.value == ESCAPED_STRING else pattern.value
        try:
            node = parse_regex(text, param="grammar")
        except RegexError as exc:
            raise LarkGrammarError(f"terminal {definition.name}: {exc}") from None
    return _ignore_case(node) if "i" in pattern.flags else node


def _components(graph: dict[str, set[str]]) -> dict[str, int]:
    """Strongly connected components (Tarjan), as rule -> component id."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            number = len(set(component.values()))
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component[w] = number
                if w == v:
                    break

    for v in graph:
        if v not in index:
            visit(v)
    return component


class _Inliner:
    def __init__(self, rules: dict[str, list[list[Any]]], terminals: dict[str, ra.Node], ignore: ra.Node) -> None:
        self.rules, self.terminals, self.ignore = rules, terminals, ignore
        graph = {name: {s.name for e in exps for s in e if not s.is_term} for name, exps in rules.items()}
        self.component = _components(graph)
        self.recursive = {name for name in rules
                          if name in graph[name] or sum(c == self.component[name] for c in self.component.values()) > 1}
        self._memo: dict[tuple[str, int], ra.Node] = {}

    def sequence(self, symbols: list[Any], owner: str, depth: int) -> ra.Node:
        parts: list[ra.Node] = []
        for i, symbol in enumerate(symbols):
            if i:
                parts.append(self.ignore)
            parts.append(self.terminals[symbol.name] if symbol.is_term else self.reference(symbol.name, owner, depth))
        return ra.seq(*parts)

    def reference(self, name: str, owner: str, depth: int) -> ra.Node:
        if self.component[name] == self.component[owner] and name in self.recursive:
            if depth == 0:
                return ra.NOTHING
            return self.rule(name, depth - 1)
        return self.rule(name, RECURSION_DEPTH)

    def rule(self, name: str, depth: int) -> ra.Node:
        key = (name, depth)
        if key not in self._memo:
            self._memo[key] = self._rule(name, depth)
        return self._memo[key]

    def _rule(self, name: str, depth: int) -> ra.Node:
        expansions = self.rules[name]

        def mentions(symbols: list[Any]) -> bool:
            return any(not s.is_term and s.name == name for s in symbols)

        left = [e[1:] for e in expansions if e and not e[0].is_term and e[0].name == name and not mentions(e[1:])]
        right = [e[:-1] for e in expansions if e and not e[-1].is_term and e[-1].name == name
                 and not mentions(e[:-1])]
        if left and len(left) + sum(not mentions(e) for e in expansions) == len(expansions):  # A: A x | y -> y x*
            base = ra.alt(*(self.sequence(e, name, depth) for e in expansions if not mentions(e)))
            tail = ra.alt(*(ra.seq(self.ignore, self.sequence(e, name, depth)) for e in left))
            return ra.seq(base, ra.repeat(tail, 0, None))
        if right and len(right) + sum(not mentions(e) for e in expansions) == len(expansions):  # A: x A | y -> x* y
            base = ra.alt(*(self.sequence(e, name, depth) for e in expansions if not mentions(e)))
            head = ra.alt(*(ra.seq(self.sequence(e, name, depth), self.ignore) for e in right))
            return ra.seq(ra.repeat(head, 0, None), base)
        return ra.alt(*(self.sequence(e, name, depth) for e in expansions))


def lark_to_regex(text: Any, *, start: str = "start") -> ra.Node:
    """The language of a lark grammar's ``start`` rule, as a regular tree (LarkGrammarError naming the problem)."""
    if not isinstance(text, str) or not text.strip():
        raise LarkGrammarError("must be a non-empty string of lark EBNF")
    from lark.exceptions import LarkError
    from lark.load_grammar import load_grammar

    try:
        grammar, _ = load_grammar(text, "<grammar>", None, False)
        terminal_defs, rule_defs, ignore_names = grammar.compile([start], set())
    except (LarkError, KeyError, ValueError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LarkGrammarError(f"lark could not load it: {reason}") from None
    terminals = {t.name: _terminal(t) for t in terminal_defs}
    rules: dict[str, list[list[Any]]] = {}
    for rule in rule_defs:
        rules.setdefault(rule.origin.name, []).append(list(rule.expansion))
    if start not in rules:
        raise LarkGrammarError(f"it has no {start!r} rule")
    ignore = ra.repeat(ra.alt(*(terminals[n] for n in ignore_names)), 0, None) if ignore_names else ra.EMPTY
    node = _Inliner(rules, terminals, ignore).rule(start, RECURSION_DEPTH)
    node = ra.seq(ignore, node, ignore)
    if ra.is_nothing(node):
        raise LarkGrammarError("its start rule derives no finite text within the recursion depth (unsatisfiable)")
    return node
