"""The IDL's doc comments: the parser's rules on hand-written snippets, generated IDL (which
thriftpy2 must load too) and the repository's IDLs; text it cannot understand never fails it;
:class:`IdlDocs` finds a class's docs in the file that declares it."""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import thriftpy2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offloop.idl import load_idl, service_info
from offloop.idl_docs import IdlDocs, parse_doc_comments

TESTS = Path(__file__).resolve().parent
TEXTLAB = TESTS.parent / "src" / "offloop" / "demo" / "textlab.thrift"
ALLTYPES = TESTS / "idl" / "alltypes.thrift"


# -- the repository's IDLs ------------------------------------------------------------------


def test_textlab_docs() -> None:
    docs = parse_doc_comments(TEXTLAB.read_text())
    assert docs["TreeNode"] == (
        "A node of a syntax tree: a phrase (label such as NP, children) or a word (a leaf: "
        "label its\npart of speech such as N or Det, no children, `word` set)."
    )
    assert docs["TreeNode.children"] == "Indexes into ParseResult.nodes; empty for a leaf."
    assert docs["ParseResult.nodes"].startswith("The tree as a flat list of nodes")
    assert docs["ParseError"] == "The sentence is not covered by the grammar."
    assert docs["ParseError.unknown_words"] == "Words the grammar's lexicon does not know."
    assert docs["TextLab.ping"] == "Light: echoes its argument (up to 64 KiB of UTF-8)."
    assert docs["TextLab.parse"].endswith("words are lowercased and .,!?;: stripped.")
    assert "\n" in docs["TextLab.parse"]  # the comment's lines, without their stars
    # Undocumented: the service itself (a // comment opens the file), and the arguments.
    assert "TextLab" not in docs and "TreeNode.label" not in docs
    assert "TextLab.parse.sentence" not in docs
    assert len(docs) == 15


def test_alltypes_docs() -> None:
    assert parse_doc_comments(ALLTYPES.read_text()) == {
        "Scalars": "Every scalar type, with required, optional and default-valued fields.",
        "Containers": "Containers of every kind, including those that map to pairs.",
        "Node": "A recursive struct: a tree.",
    }


# -- the rules, one by one ------------------------------------------------------------------

EVERY_KIND = """
/** A service. */
service S extends Base {
  /** A function. */
  oneway void ping(/** An argument. */ 1: i32 a, /** Another. */ 2: list<string> b),
  /** Throws. */
  map<string, list<i32>> get(1: required string key = "k")
      throws (/** When missing. */ 1: Missing missing) (annotated = "yes");
  i32 plain()
}
/** A struct. */ struct St { /** x */ 1: i32 x /** y */ 2: i32 y; }
/** A union. */ union Un { /** a */ 1: i32 a, }
/** An exception. */ exception Ex { /** why */ 1: string why }
/** An enum. */ enum En { /** red */ RED = 1, GREEN, /** blue */ BLUE = 0x10 }
/** A typedef. */ typedef map<string, i64> Table
/** A const. */ const list<string> NAMES = ["a", "b"]
"""


def test_every_kind_of_definition() -> None:
    assert parse_doc_comments(EVERY_KIND) == {
        "S": "A service.",
        "S.ping": "A function.",
        "S.ping.a": "An argument.",
        "S.ping.b": "Another.",
        "S.get": "Throws.",
        "S.get.throws.missing": "When missing.",
        "St": "A struct.",
        "St.x": "x",
        "St.y": "y",
        "Un": "A union.",
        "Un.a": "a",
        "Ex": "An exception.",
        "Ex.why": "why",
        "En": "An enum.",
        "En.RED": "red",
        "En.BLUE": "blue",
        "Table": "A typedef.",
        "NAMES": "A const.",
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Stars and the indentation the lines share go; lines inside keep theirs.
        (
            "/**\n   * One.\n   *   indented\n   *\n   * Two.\n   */\nstruct A {}",
            "One.\n  indented\n\nTwo.",
        ),
        ("/** First line\n    second line\n */ struct A {}", "First line\nsecond line"),
        ("/**\n\tTabbed.\n\tTwice.\n*/ struct A {}", "Tabbed.\nTwice."),
        ("/**   spaced   */ struct A {}", "spaced"),
        ("/** **bold** */ struct A {}", "**bold**"),
        ("/** a/b, c//d, e*f, * / */ struct A {}", "a/b, c//d, e*f, * /"),
        ("/** a\r\n * b\r\n */ struct A {}", "a\nb"),
    ],
)
def test_text_of_a_doc_comment(source: str, expected: str) -> None:
    assert parse_doc_comments(source) == {"A": expected}


@pytest.mark.parametrize(
    "source",
    [
        "/** Doc. */ // a line comment /** not a doc */\nstruct A {}",
        "/** Doc. */ # a hash comment */ /**\nstruct A {}",
        "/** Doc. */ /* a block comment */ struct A {}",
        "/** Doc. */ /**/ struct A {}",
        "/** Not this. */ /** Doc. */ struct A {}",
        '/** Doc. */ struct A { 1: string s = "/** */ // # */" }',
        "/** Doc. */ struct A { 1: string s = '/* \\' // */' }",
    ],
)
def test_comments_and_strings(source: str) -> None:
    assert parse_doc_comments(source) == {"A": "Doc."}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # A doc comment must come right before what it documents.
        ("/** Nothing. */ namespace py x\nstruct A {}", {}),
        ('/** Nothing. */ include "x.thrift"\nstruct A {}', {}),
        ("struct A { 1: i32 x, /** Trailing: nothing. */ }", {}),
        ("/** */ struct A {}", {}),
        ("/***/ struct A {}", {}),
        # Fields without ids, requiredness or separators; negative ids; annotations.
        ("struct A { /** x */ i32 x /** y */ -1: optional i32 y }", {"A.x": "x", "A.y": "y"}),
        (
            "struct A { /** d */ 1: list<map<i32, set<string>>> (ann = '1') d (ann = '2'), }",
            {"A.d": "d"},
        ),
        # Of two definitions with one key, the first.
        ("/** one */ struct A {} /** two */ struct A {}", {"A": "one"}),
        # Unterminated comments and strings end at the end of the file (or line).
        ("/** Doc. */ struct A { /** open", {"A": "Doc."}),
        (
            '/** Doc. */ struct A { 1: string s = "open\n /** x */ 2: i32 x }',
            {"A": "Doc.", "A.x": "x"},
        ),
        # Text that fits no rule costs the docs near it, not the rest.
        ("struct { } /** B */ struct B { 1: i32 = } /** C */ enum C {}", {"B": "B", "C": "C"}),
        (
            "/** S */ service S { /** f */ void f( } /** T */ struct T {}",
            {"S": "S", "S.f": "f", "T": "T"},
        ),
        # A definition keyword ends a block left open.
        (
            "struct A { /** x */ 1: i32 x /** B */ struct B { /** y */ 1: i32 y }",
            {"A.x": "x", "B": "B", "B.y": "y"},
        ),
    ],
)
def test_edges(source: str, expected: dict[str, str]) -> None:
    assert parse_doc_comments(source) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/**" * 20_000,
        "/*" * 20_000,
        '"' * 40_000,
        "{" * 40_000 + "}" * 40_000,
        "<" * 40_000,
        "struct A { " * 10_000,
        "service S { void f(" * 10_000,
        "(" * 40_000 + "/** x */ struct A {}",
        "enum E { " + "A = " * 20_000,
    ],
)
def test_pathological_text_is_linear(text: str) -> None:
    started = time.perf_counter()
    parse_doc_comments(text)
    assert time.perf_counter() - started < 2.0


def test_cost_is_linear_in_the_size() -> None:
    source = TEXTLAB.read_text()

    def seconds(copies: int) -> float:
        text = source * copies
        started = time.perf_counter()
        parse_doc_comments(text)
        return time.perf_counter() - started

    small, large = min(seconds(50) for _ in range(3)), min(seconds(400) for _ in range(3))
    assert large < small * 8 * 3  # eight times the text: about eight times the time


# -- properties -----------------------------------------------------------------------------


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_text_parses(text: str) -> None:
    docs = parse_doc_comments(text)
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in docs.items())


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_mangled_idl_never_fails(data: st.DataObject) -> None:
    source = TEXTLAB.read_text() + ALLTYPES.read_text()
    for _ in range(data.draw(st.integers(1, 8))):
        start = data.draw(st.integers(0, len(source)))
        end = data.draw(st.integers(start, min(len(source), start + 40)))
        junk = data.draw(
            st.sampled_from(["", "/*", "*/", "/**", '"', "'", "{", "}", "(", "<", "#"])
        )
        source = source[:start] + junk + source[end:]
    parse_doc_comments(source)


# Generated IDL: definitions with and without docs, comments and strings that look like doc
# comments in between; thriftpy2 must load it, and the parser must find exactly the docs.

# thriftpy2's lexer (Apache Thrift's regular expressions) refuses some comments that hold a
# "/" after a "*" ("/** * / */"), so the generated ones hold neither; the parser's own
# handling of them is tested above.
_WORD = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="*/"),
    min_size=1,
    max_size=8,
)
_LINE = st.lists(_WORD, min_size=1, max_size=5).map(" ".join)
_NOISE_TEXT = st.text(alphabet=st.sampled_from(list("ab #'\"\\{}()<>;,")), max_size=12)
_LINE_NOISE_TEXT = st.text(alphabet=st.sampled_from(list("ab /*#'\"\\{}()<>;,")), max_size=12)
_BASE_TYPES = ["bool", "byte", "i16", "i32", "i64", "double", "string", "binary"]


@dataclass
class _Source:
    """Generated IDL text, and the docs it holds."""

    parts: list[str]
    docs: dict[str, str]


@st.composite
def _doc(draw: st.DrawFn) -> tuple[str, str] | None:
    """A doc comment in one of its layouts, and its text; or none."""
    if not draw(st.booleans()):
        return None
    lines = draw(st.lists(_LINE, min_size=1, max_size=4))
    if draw(st.booleans()) and len(lines) > 1:
        lines.insert(1, "")  # a paragraph break
    layout = draw(st.sampled_from(["one line", "stars", "bare", "first line"]))
    if layout == "one line" or len(lines) == 1:
        return f"/** {' '.join(lines)} */", " ".join(lines)
    indent = " " * draw(st.integers(0, 4))
    if layout == "stars":
        body = "".join(f"{indent} * {line}".rstrip() + "\n" for line in lines)
        return f"/**\n{body}{indent} */", "\n".join(lines)
    if layout == "bare":
        body = "".join(f"{indent}  {line}".rstrip() + "\n" if line else "\n" for line in lines)
        return f"/**\n{body}{indent}*/", "\n".join(lines)
    rest = "".join(f"\n{indent} * {line}".rstrip() for line in lines[1:])
    return f"/** {lines[0]}{rest} */", "\n".join(lines)


@st.composite
def _noise(draw: st.DrawFn) -> str:
    """White space, and comments that are not doc comments."""
    kind = draw(st.sampled_from(["space", "line", "hash", "block", "empty"]))
    if kind == "line":
        return f" // {draw(_LINE_NOISE_TEXT)}\n"
    if kind == "hash":
        return f" # {draw(_LINE_NOISE_TEXT)}\n"
    if kind == "block":
        return f" /* {draw(_NOISE_TEXT)} */ "
    if kind == "empty":
        return " /**/ "
    return draw(st.sampled_from([" ", "\n", "\n\n  ", "\t"]))


def _documented(draw: st.DrawFn, out: _Source, key: str) -> None:
    """Maybe a doc comment for ``key``, then noise."""
    doc = draw(_doc())
    if doc is not None:
        out.parts.append(doc[0])
        out.docs[key] = doc[1]
    out.parts.append(draw(_noise()))


def _type(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(_BASE_TYPES))
    return draw(st.sampled_from([base, f"list<{base}>", f"set<{base}>", f"map<string, {base}>"]))


def _fields(draw: st.DrawFn, out: _Source, prefix: str, *, requiredness: bool) -> None:
    for j in range(draw(st.integers(0, 4))):
        _documented(draw, out, f"{prefix}f{j}")
        options = ["", "optional "] + (["required "] if requiredness else [])
        ftype = _type(draw)
        default = ""
        if ftype == "string" and draw(st.booleans()):
            default = ' = "/** not a doc */ // nor # this"'
        annotation = draw(st.sampled_from(["", ' (note = "*/ /**")']))
        separator = draw(st.sampled_from([",", ";", ""]))
        out.parts.append(
            f"{j + 1}: {draw(st.sampled_from(options))}{ftype} f{j}{default}{annotation}"
            f"{separator}\n"
        )
        out.parts.append(draw(_noise()))


@st.composite
def _idl(draw: st.DrawFn) -> _Source:
    out = _Source([], {})
    names = (f"D{i}" for i in itertools.count())
    exceptions: list[str] = []
    for kind in draw(
        st.lists(
            st.sampled_from(["struct", "union", "exception", "enum", "typedef", "const"]),
            max_size=6,
        )
    ):
        name = next(names)
        _documented(draw, out, name)
        if kind in ("struct", "union", "exception"):
            out.parts.append(f"{kind} {name} {{\n")
            _fields(draw, out, f"{name}.", requiredness=kind != "union")
            out.parts.append("}\n")
            if kind == "exception":
                exceptions.append(name)
        elif kind == "enum":
            out.parts.append(f"enum {name} {{\n")
            for j in range(draw(st.integers(1, 4))):
                _documented(draw, out, f"{name}.V{j}")
                value = draw(st.sampled_from(["", f" = {j + 10}"]))
                out.parts.append(f"V{j}{value}{draw(st.sampled_from([',', ';', '']))}\n")
            out.parts.append("}\n")
        elif kind == "typedef":
            out.parts.append(f"typedef {_type(draw)} {name}\n")
        else:
            out.parts.append(f'const string {name} = "/** {name} */ // #"\n')
        out.parts.append(draw(_noise()))
    if draw(st.booleans()):
        _documented(draw, out, "Svc")
        out.parts.append("service Svc {\n")
        for j in range(draw(st.integers(0, 3))):
            _documented(draw, out, f"Svc.m{j}")
            oneway = draw(st.booleans())
            returns = "oneway void" if oneway else draw(st.sampled_from(["void", _type(draw)]))
            out.parts.append(f"{returns} m{j}(")
            _fields(draw, out, f"Svc.m{j}.", requiredness=True)
            out.parts.append(")")
            if exceptions and not oneway and draw(st.booleans()):
                out.parts.append(" throws (")
                _documented(draw, out, f"Svc.m{j}.throws.e")
                out.parts.append(f"1: {draw(st.sampled_from(exceptions))} e)")
            out.parts.append(draw(st.sampled_from([",\n", ";\n", "\n"])))
        out.parts.append("}\n")
    return out


_LOADED = itertools.count()


@given(source=_idl())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_idl(source: _Source) -> None:
    text = "".join(source.parts)
    # The generator writes real Thrift: thriftpy2 loads it.
    thriftpy2.load_fp(io.StringIO(text), module_name=f"generated_{next(_LOADED)}_thrift")
    assert parse_doc_comments(text) == source.docs


# -- IdlDocs: the file that declares a thing documents it ------------------------------------


def test_idl_docs_of_a_loaded_module() -> None:
    module = load_idl(TEXTLAB)
    docs = IdlDocs.of_modules([module])
    assert docs.of(module.ParseResult, "nodes") is not None
    assert docs.of(module.ParseError) == "The sentence is not covered by the grammar."
    assert docs.of(module.TreeNode, "label") is None
    assert docs.method(module.TextLab, "ping") == (
        "Light: echoes its argument (up to 64 KiB of UTF-8)."
    )
    assert docs.method(module.TextLab, "nope") is None
    assert docs.of(object) is None
    assert service_info(module, "TextLab").module is module


def test_includes_and_extends(tmp_path: Path) -> None:
    # thriftpy2 caches an included module by its file's name, for the whole process: a name
    # no other test includes.
    (tmp_path / "idl_docs_base.thrift").write_text(
        "/** In base. */\nstruct Shared { /** x in base */ 1: i32 x }\n"
        "/** Base service. */\n"
        "service Base { /** Inherited. */ void hello(/** who */ 1: string who) }\n"
    )
    (tmp_path / "main.thrift").write_text(
        'include "idl_docs_base.thrift"\n'
        "/** Not Shared's: main has no Shared. */\nstruct Own { 1: idl_docs_base.Shared s }\n"
        "/** Main. */\n"
        "service Main extends idl_docs_base.Base { /** Own. */ idl_docs_base.Shared get() }\n"
    )
    module = load_idl(tmp_path / "main.thrift")
    docs = IdlDocs.of_modules([module])
    assert docs.of(module.idl_docs_base.Shared) == "In base."
    assert docs.of(module.idl_docs_base.Shared, "x") == "x in base"
    assert docs.of(module.Main) == "Main."
    assert docs.method(module.Main, "get") == "Own."
    assert docs.method(module.Main, "hello") == "Inherited."
    assert docs.method(module.Main, "hello", "who") == "who"
    assert docs.of(module.Own) == "Not Shared's: main has no Shared."


def test_an_unreadable_file_gives_no_docs(tmp_path: Path) -> None:
    path = tmp_path / "gone.thrift"
    path.write_text("/** Doc. */ struct A { 1: i32 x }\nservice S { A get() }\n")
    module = load_idl(path)
    path.unlink()
    docs = IdlDocs.of_modules([module])
    assert docs.of(module.A) is None
    path.write_bytes(b"/** \xff\xfe */ struct A { 1: i32 x }\n")
    assert IdlDocs.of_modules([module]).of(module.A) == "\ufffd\ufffd"
