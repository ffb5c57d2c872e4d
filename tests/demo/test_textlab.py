"""Tests of the TextLab demo handler, called directly (no server, no network)."""

from __future__ import annotations

import inspect
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from offloop.context import CANCEL, CancelFlag
from offloop.demo import textlab
from offloop.demo.textlab import IDL_PATH, MAX_AMBIGUITY, MAX_PARSE_WORDS, Handler, tokenize
from offloop.errors import DeadlineExceeded
from offloop.idl import load_idl, service_info

IDL = textlab.textlab_idl()


@pytest.fixture(scope="module")
def handler() -> Handler:
    return Handler()


def leaves(nodes: list[Any]) -> list[str]:
    """The words of a flat tree, left to right (a pre-order walk from nodes[0])."""
    words: list[str] = []
    stack = [0]
    while stack:
        node = nodes[stack.pop()]
        if node.word is not None:
            words.append(node.word)
        stack.extend(reversed(node.children))
    return words


def check_nodes(nodes: list[Any]) -> None:
    """Every node but the root is the child of exactly one node; leaves and only leaves
    carry a word."""
    seen = [0] * len(nodes)
    for node in nodes:
        assert node.label
        if node.word is None:
            assert node.children
        else:
            assert node.children == []
        for child in node.children:
            assert 0 < child < len(nodes)
            seen[child] += 1
    assert seen == [0] + [1] * (len(nodes) - 1)


# ---------------------------------------------------------------- the IDL


def test_handler_implements_every_idl_method() -> None:
    methods = service_info(load_idl(IDL_PATH), "TextLab").methods
    assert set(methods) == {"ping", "parse", "burn", "crunch", "sleep", "embed"}
    for name, info in methods.items():
        method = getattr(Handler, name)
        params = list(inspect.signature(method).parameters)[1:]  # drop self
        assert len(params) == len(info.arg_names), name


def test_idl_is_loaded_once() -> None:
    assert textlab.textlab_idl() is textlab.textlab_idl()


# ---------------------------------------------------------------- ping


def test_ping_echoes(handler: Handler) -> None:
    assert handler.ping("hello, wörld") == "hello, wörld"
    assert handler.ping("") == ""


def test_ping_rejects_over_64_kib(handler: Handler) -> None:
    assert handler.ping("x" * 65536) == "x" * 65536
    with pytest.raises(IDL.InvalidArgument):
        handler.ping("x" * 65537)
    with pytest.raises(IDL.InvalidArgument):
        handler.ping("é" * 40000)  # 40,000 characters, 80,000 bytes


# ---------------------------------------------------------------- parse


def test_tokenize() -> None:
    assert tokenize("  The dog, SAW a man... in the park! ? ") == [
        "the", "dog", "saw", "a", "man", "in", "the", "park",
    ]  # fmt: skip


def test_parse_tree_structure(handler: Handler) -> None:
    sentence = "The dog saw a man in the park."
    words = ["the", "dog", "saw", "a", "man", "in", "the", "park"]
    result = handler.parse(sentence)
    nodes = result.nodes
    assert nodes[0].label == "S"
    check_nodes(nodes)
    assert leaves(nodes) == words
    assert result.bracketed.startswith("(S ")
    assert result.bracketed.count("(") == result.bracketed.count(")") == len(nodes)
    for word in words:
        assert f" {word})" in result.bracketed
    labels = {node.word: node.label for node in nodes if node.word is not None}
    assert labels["dog"] == "N"
    assert labels["the"] == "Det"
    assert labels["in"] == "P"


def test_parse_pp_attachment_is_ambiguous(handler: Handler) -> None:
    # "in the park" modifies "a man" or "saw".
    assert handler.parse("the dog saw a man in the park").ambiguity == 2
    assert handler.parse("a cat chased the dog").ambiguity == 1
    result = handler.parse(
        "the old man with a telescope saw the small dog in the park near the river"
    )
    assert result.ambiguity >= 2
    assert leaves(result.nodes)[-1] == "river"


@pytest.mark.parametrize(
    "sentence",
    [
        "the dog saw a man in the park",
        "the dog that the old man saw in the park chased a small cat",
        "did the dog see the man with a telescope",
    ],
)
def test_parse_returns_nltks_first_parse(handler: Handler, sentence: str) -> None:
    # The first tree and the count are read off the chart without NLTK's tree builder;
    # they must agree with it.
    words = tokenize(sentence)
    trees = list(handler._parser.parse(words))
    result = handler.parse(sentence)
    assert result.bracketed == trees[0].pformat(margin=sys.maxsize)
    assert result.ambiguity == len(trees)


def test_parse_is_thread_safe(handler: Handler) -> None:
    # One Handler serves every thread of a thread pool; NLTK's Earley predictor keeps a
    # cache shared by all parsers, keyed by chart.
    sentences = [
        "the dog saw a man in the park",
        "the old man with a telescope saw the small dog in the park near the river",
        "a cat chased the dog",
        "the dog that the old man saw in the park chased a small cat",
    ]
    expected = [handler.parse(s).bracketed for s in sentences]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: handler.parse(s).bracketed, sentences * 5))
    assert got == expected * 5


def test_parse_caps_ambiguity(handler: Handler) -> None:
    sentence = " and ".join(["dogs"] * 10) + " ran"  # 20 words, 4,862 parses
    assert handler.parse(sentence).ambiguity == MAX_AMBIGUITY


def test_parse_unknown_words(handler: Handler) -> None:
    with pytest.raises(IDL.ParseError) as info:
        handler.parse("the dog saw a xylophonist and a zyzzyva and a xylophonist")
    assert info.value.unknown_words == ["xylophonist", "zyzzyva"]
    assert "xylophonist" in info.value.message


def test_parse_ungrammatical(handler: Handler) -> None:
    with pytest.raises(IDL.ParseError) as info:
        handler.parse("saw the the dog")
    assert info.value.unknown_words == []
    assert "grammar" in info.value.message


@pytest.mark.parametrize("sentence", ["", "   ", "?!..."])
def test_parse_rejects_empty(handler: Handler, sentence: str) -> None:
    with pytest.raises(IDL.InvalidArgument):
        handler.parse(sentence)


def test_parse_rejects_too_long(handler: Handler) -> None:
    with pytest.raises(IDL.InvalidArgument) as info:
        handler.parse("dog " * (MAX_PARSE_WORDS + 1))
    assert str(MAX_PARSE_WORDS) in info.value.message


# ---------------------------------------------------------------- burn, crunch, sleep


def test_burn_runs_calibrated_iterations(handler: Handler) -> None:
    assert handler.iterations_per_ms > 0
    twenty = handler.burn(20)
    assert twenty == 20 * handler.iterations_per_ms
    assert handler.burn(40) == 2 * twenty
    assert handler.burn(0) == 0


def test_burn_stops_once_its_caller_gave_up(handler: Handler) -> None:
    """Issue 13: a thread-pool call cannot be killed; burn looks at its cancel flag after each
    millisecond of work and stops there."""
    flag = CancelFlag()
    flag.set()
    token = CANCEL.set(flag)
    try:
        with pytest.raises(DeadlineExceeded):
            handler.burn(textlab.MAX_MILLIS)
    finally:
        CANCEL.reset(token)
    assert handler.burn(2) == 2 * handler.iterations_per_ms  # none set: it runs to the end


def test_burn_is_calibrated_once_per_process(handler: Handler) -> None:
    assert Handler().iterations_per_ms == handler.iterations_per_ms
    assert Handler(iterations_per_ms=7).burn(3) == 21


@pytest.mark.parametrize("millis", [-1, 60_001])
def test_burn_rejects_out_of_range(handler: Handler, millis: int) -> None:
    with pytest.raises(IDL.InvalidArgument):
        handler.burn(millis)


def test_crunch_is_deterministic(handler: Handler) -> None:
    rng = np.random.default_rng(64)
    a = rng.standard_normal((64, 64))
    b = rng.standard_normal((64, 64))
    expected = float(np.trace(a @ b))
    assert handler.crunch(64) == handler.crunch(64)
    assert handler.crunch(64) == pytest.approx(expected, rel=1e-12)
    assert isinstance(handler.crunch(1), float)


@pytest.mark.parametrize("n", [0, -3, 4097])
def test_crunch_rejects_out_of_range(handler: Handler, n: int) -> None:
    with pytest.raises(IDL.InvalidArgument):
        handler.crunch(n)


class FakeClock:
    """Stands for the ``time`` module in ``textlab``: ``sleep`` advances ``perf_counter`` by
    what was asked, plus ``overshoot`` seconds (an OS wakes a sleeper late, never early)."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.now = 1000.0
        self.overshoot = overshoot
        self.slept: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds + self.overshoot


@pytest.mark.parametrize("millis", [0, 1, 250, 60_000])
def test_sleep_waits_the_time_asked(
    handler: Handler, monkeypatch: pytest.MonkeyPatch, millis: int
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(textlab, "time", clock)
    assert handler.sleep(millis) == pytest.approx(millis)
    assert clock.slept == [millis / 1000]  # one wait, of the asked length, in seconds


def test_sleep_returns_the_time_it_really_waited(
    handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(overshoot=0.004)
    monkeypatch.setattr(textlab, "time", clock)
    assert handler.sleep(10) == pytest.approx(14.0)
    assert clock.slept == [0.01]


@pytest.mark.parametrize("millis", [-1, 60_001])
def test_sleep_rejects_out_of_range(handler: Handler, millis: int) -> None:
    with pytest.raises(IDL.InvalidArgument):
        handler.sleep(millis)


# ---------------------------------------------------------------- embed


def test_embed_without_the_dl_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(IDL.InvalidArgument) as info:
        Handler().embed([["a sentence"]])
    assert "offloop[dl]" in info.value.message


def test_embed_uses_a_plugged_in_embedder() -> None:
    class Fake:
        def encode(self, texts: list[str]) -> list[list[float]]:
            return [[float(len(text)), 1.0] for text in texts]

    handler = Handler(embedder=Fake())
    # embed is batched: one entry per call in, one result per call out.
    assert handler.embed([["ab", "abc"]]) == [[[2.0, 1.0], [3.0, 1.0]]]
    assert handler.embed([[]]) == [[]]
    too_many, ok = handler.embed([["x"] * (textlab.MAX_EMBED_TEXTS + 1), ["abcd"]])
    assert isinstance(too_many, IDL.InvalidArgument)
    assert ok == [[4.0, 1.0]]


def test_forest_keeps_words_inside_longer_rules() -> None:
    # english.cfg keeps words in rules of their own; the forest reader takes any CFG.
    import nltk
    from nltk.parse.earleychart import EarleyChartParser

    grammar = nltk.CFG.fromstring("S -> 'hello' NP | 'hello' N N\nNP -> N N\nN -> 'big' | 'world'")
    chart = EarleyChartParser(grammar).chart_parse(["hello", "big", "world"])
    forest = textlab._Forest(chart)
    roots = [e for e in chart.select(start=0, end=3, lhs=grammar.start()) if e.is_complete()]
    assert [forest.count(root) for root in roots] == [1, 1]
    bracketed, nodes = forest.first_tree(roots[0], IDL.TreeNode)
    expected = next(EarleyChartParser(grammar).parse(["hello", "big", "world"]))
    assert bracketed == expected.pformat(margin=sys.maxsize)
    check_nodes(nodes)
    assert leaves(nodes) == ["hello", "big", "world"]
    assert nodes[1].label == nodes[1].word == "hello"
