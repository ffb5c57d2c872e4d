"""The doc comments of a Thrift IDL: ``/** ... */`` before a definition documents it.

thriftpy2 drops comments when it parses an IDL, so this reads the ``.thrift`` source again,
with a small parser of its own that only looks for doc comments and the names they document.
It is best effort by design: text it does not understand costs a missing doc, never an error,
so a gateway starts whatever the IDL's comments look like.

What is documented, and its key (qualified by ``.``)::

    /** ... */ service TextLab { ... }                 TextLab
    /** ... */ ParseResult parse(                      TextLab.parse
                 /** ... */ 1: string sentence)        TextLab.parse.sentence
               throws (/** ... */ 1: ParseError e)     TextLab.parse.throws.e
    /** ... */ struct ParseResult { ... }              ParseResult (union, exception too)
                 /** ... */ 2: list<TreeNode> nodes,   ParseResult.nodes
    /** ... */ enum Color { /** ... */ RED = 1 }       Color, Color.RED
    /** ... */ typedef i64 UserId                      UserId
    /** ... */ const i32 LIMIT = 10                    LIMIT

The rules:

- A doc comment documents the definition, field, function, argument or enum value whose first
  token (a field id, ``required``/``optional``, ``oneway``, a keyword or a type) comes next,
  with only white space and other comments in between. Of two doc comments in a row, the
  second counts. A doc comment followed by anything else (``}``, ``namespace``...) documents
  nothing.
- ``//`` and ``#`` line comments and ``/* */`` comments (``/**/`` too) are skipped, and so
  are comment markers inside string literals (``"..."``, ``'...'``, with ``\\`` escapes).
- The text: what lies between ``/**`` and ``*/``, each line's leading ``*`` (after its
  indentation) removed, then the indentation the lines share, then blank lines at both ends.
  An empty doc comment documents nothing; of two definitions with one key, the first counts.
- Each file documents what it declares: a doc comment in an included file documents the
  definitions of that file, keyed by their unqualified names within it (:class:`IdlDocs`
  finds a class's docs in the file that declares it).

Limits: one pass over the text, each token read once, so time and memory are linear in the
file's size. An unterminated comment or string ends at the end of the file (or line); after
text that fits no rule the parser skips one token and goes on, which may lose the docs of
what follows within that block. Typedefs and constants are found but thriftpy2 resolves them
away, so no OpenAPI schema shows their docs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from offloop.idl import included_modules

__all__ = ["IdlDocs", "parse_doc_comments"]

# One token of Thrift source, comments aside (they are found with str.find: linear for sure).
_TOKEN: Final = re.compile(
    r"""
    (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<number>[+-]?[0-9][A-Za-z0-9_.]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*(?:"|(?=\n)|\Z)|'(?:[^'\\\n]|\\.)*(?:'|(?=\n)|\Z))
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACE: Final = re.compile(r"\s+")
_OPENERS: Final = {"(": ")", "[": "]", "{": "}", "<": ">"}
_FIELD_SEPARATORS: Final = (",", ";")
_STRUCT_KEYWORDS: Final = frozenset({"struct", "union", "exception"})
# Words that start a definition: reserved, so never a type or a name; one ends the block
# being read, which is how the parser finds its feet after a block it could not close.
_DEFINITION_KEYWORDS: Final = _STRUCT_KEYWORDS | {
    "enum",
    "senum",
    "service",
    "typedef",
    "const",
    "include",
    "cpp_include",
    "namespace",
}
# Old XSD field options (`xsd_optional`...), which come after a field's name.
_XSD_OPTIONS: Final = frozenset({"xsd_optional", "xsd_nillable"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", "number", "string" or "punct"
    text: str
    doc: str | None  # the doc comment right before this token, cleaned


def _clean(raw: str) -> str:
    """The text of a doc comment, given what lies between ``/**`` and ``*/``."""
    lines = raw.split("\n")
    first = lines[0].strip()
    rest: list[str] = []
    for line in lines[1:]:
        stripped = line.lstrip()
        rest.append(stripped[1:] if stripped.startswith("*") else line)
    rest = [line.rstrip() for line in rest]
    indents = [len(line) - len(line.lstrip()) for line in rest if line.strip()]
    cut = min(indents, default=0)
    out = [first, *(line[cut:] for line in rest)]
    while out and not out[0]:
        out.pop(0)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def _tokens(text: str) -> list[_Token]:
    """The tokens of ``text``, each with the doc comment just before it."""
    tokens: list[_Token] = []
    doc: str | None = None
    pos, end = 0, len(text)
    while pos < end:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        if text.startswith(("//", "#"), pos):
            newline = text.find("\n", pos)
            pos = end if newline < 0 else newline + 1
            continue
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            stop = end if close < 0 else close
            if text.startswith("/**", pos) and stop > pos + 2:
                doc = _clean(text[pos + 3 : stop]) or None
            pos = end if close < 0 else close + 2
            continue
        match = _TOKEN.match(text, pos)
        if match and match.lastgroup:
            tokens.append(_Token(match.lastgroup, match.group(), doc))
            pos = match.end()
        else:
            tokens.append(_Token("punct", text[pos], doc))
            pos += 1
        doc = None
    return tokens


_END: Final = _Token("end", "", None)


class _Parser:
    """Reads definitions from tokens; every step moves on by at least one token or stops."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.docs: dict[str, str] = {}

    # -- the cursor ----------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else _END

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind in ("punct", "word") and token.text == text

    def word(self) -> str | None:
        """Take a word, if one is next (not a keyword that starts a definition)."""
        token = self.peek()
        if token.kind != "word" or token.text in _DEFINITION_KEYWORDS:
            return None
        self.i += 1
        return token.text

    def take(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def skip_group(self) -> None:
        """Skip a bracketed group (``<...>``, ``(...)``, ``[...]``, ``{...}``) or one token."""
        opener = self.peek().text if self.peek().kind == "punct" else ""
        closer = _OPENERS.get(opener)
        self.i += 1
        if closer is None:
            return
        depth = 1
        while depth and self.i < len(self.tokens):
            token = self.tokens[self.i]
            self.i += 1
            if token.kind == "punct":
                depth += (token.text == opener) - (token.text == closer)

    def in_block(self, closer: str) -> bool:
        """Whether the block goes on; ``False`` at its ``closer`` (taken), at the end of the
        text, and at what cannot be in it (a definition, a ``}`` in an argument list)."""
        token = self.peek()
        if token.kind == "end" or self.take(closer):
            return False
        if token.kind == "word":
            return token.text not in _DEFINITION_KEYWORDS
        return not (closer == ")" and token.text == "}")

    def skip_annotations(self) -> None:
        while self.at("("):
            self.skip_group()

    def record(self, key: str, doc: str | None) -> None:
        if doc:
            self.docs.setdefault(key, doc)

    # -- the grammar, loosely ------------------------------------------------------------

    def parse(self) -> dict[str, str]:
        while self.i < len(self.tokens):
            start = self.i
            token = self.peek()
            keyword = token.text if token.kind == "word" else ""
            if keyword in _STRUCT_KEYWORDS:
                self.struct()
            elif keyword == "enum":
                self.enum()
            elif keyword == "service":
                self.service()
            elif keyword == "typedef":
                self.i += 1
                self.type_()
                self.named(token.doc)
            elif keyword == "const":
                self.i += 1
                self.type_()
                self.named(token.doc)
                if self.take("="):
                    self.skip_group()
            elif keyword in ("include", "cpp_include"):
                self.i += 2
            elif keyword == "namespace":
                self.i += 3
            if self.i == start:
                self.i += 1
        return self.docs

    def named(self, doc: str | None, prefix: str = "") -> str | None:
        """Take the name of what is being defined, and record its doc."""
        name = self.word()
        if name is not None:
            self.record(prefix + name, doc)
        return name

    def type_(self) -> bool:
        """Skip a type (``i32``, ``list<map<string, Foo>>``, with annotations)."""
        if self.word() is None:
            return False
        if self.at("<"):
            self.skip_group()
        self.skip_annotations()
        return True

    def struct(self) -> None:
        doc = self.peek().doc
        self.i += 1
        name = self.named(doc)
        self.take("xsd_all")
        if name is None or not self.take("{"):
            return
        self.fields(name + ".", "}")
        self.skip_annotations()

    def fields(self, prefix: str, closer: str) -> None:
        """Fields up to ``closer`` (taken): a struct's, a function's arguments or throws."""
        while self.in_block(closer):
            start = self.i
            self.field(prefix)
            if self.i == start:
                self.i += 1

    def field(self, prefix: str) -> None:
        doc = self.peek().doc
        if self.peek().kind == "number" and self.peek(1).text == ":":
            self.i += 2
        if self.at("required") or self.at("optional"):
            self.i += 1
        if not self.type_() or self.named(doc, prefix) is None:
            return
        while self.peek().text in _XSD_OPTIONS:
            self.i += 1
        if self.take("xsd_attrs"):
            self.skip_group()
        if self.take("="):
            self.skip_group()
        self.skip_annotations()
        if self.peek().text in _FIELD_SEPARATORS:
            self.i += 1

    def enum(self) -> None:
        doc = self.peek().doc
        self.i += 1
        name = self.named(doc)
        if name is None or not self.take("{"):
            return
        while self.in_block("}"):
            start = self.i
            self.named(self.peek().doc, name + ".")
            if self.take("="):
                self.i += 1
            self.skip_annotations()
            if self.peek().text in _FIELD_SEPARATORS:
                self.i += 1
            if self.i == start:
                self.i += 1
        self.skip_annotations()

    def service(self) -> None:
        doc = self.peek().doc
        self.i += 1
        name = self.named(doc)
        if self.take("extends"):
            self.word()
        if name is None or not self.take("{"):
            return
        while self.in_block("}"):
            start = self.i
            self.function(name + ".")
            if self.i == start:
                self.i += 1
        self.skip_annotations()

    def function(self, prefix: str) -> None:
        doc = self.peek().doc
        self.take("oneway")
        if not self.take("void") and not self.type_():
            return
        name = self.named(doc, prefix)
        if name is None or not self.take("("):
            return
        self.fields(f"{prefix}{name}.", ")")
        if self.take("throws") and self.take("("):
            self.fields(f"{prefix}{name}.throws.", ")")
        self.skip_annotations()
        if self.peek().text in _FIELD_SEPARATORS:
            self.i += 1


def parse_doc_comments(text: str) -> dict[str, str]:
    """The doc comments of one IDL file's text, by the qualified name of what they document.

    Never raises on any text; see the module docstring for the rules and the keys.
    """
    return _Parser(_tokens(text)).parse()


class IdlDocs:
    """The doc comments of loaded IDLs, found by the class that declares a thing.

    Args:
        tables: for each struct, union, exception, enum and service class, the doc comments
            of the file that declares it (as :func:`parse_doc_comments` returns them).
    """

    def __init__(self, tables: Mapping[Any, Mapping[str, str]] | None = None) -> None:
        self._tables: dict[Any, Mapping[str, str]] = dict(tables or {})

    @classmethod
    def of_modules(cls, modules: Iterable[ModuleType]) -> IdlDocs:
        """Read the ``.thrift`` files of loaded IDL modules and of what they include.

        A file that cannot be read now (moved, not UTF-8) gives no docs; nothing raises.
        """
        tables: dict[Any, Mapping[str, str]] = {}
        by_file: dict[str, Mapping[str, str]] = {}
        for module in included_modules(modules):
            path = getattr(module, "__thrift_file__", None)
            if not isinstance(path, str):
                continue
            if path not in by_file:
                by_file[path] = _read_docs(path)
            meta = getattr(module, "__thrift_meta__", {})
            for kind in ("structs", "unions", "exceptions", "enums", "services"):
                for declared in meta.get(kind, ()):
                    tables.setdefault(declared, by_file[path])
        return cls(tables)

    def of(self, cls: Any, *member: str) -> str | None:
        """The doc of a struct, union, exception, enum or service class, or of its member
        (``of(ParseResult, "nodes")``, ``of(Color, "RED")``); ``None`` when undocumented."""
        table = self._tables.get(cls)
        if table is None:
            return None
        return table.get(".".join((cls.__name__, *member)))

    def method(self, service: Any, method: str, *member: str) -> str | None:
        """The doc of a service's method, or of its argument (``method(S, "parse",
        "sentence")``) or declared exception (``method(S, "parse", "throws", "error")``).

        An inherited method's doc is that of the service that declares it (``extends``).
        """
        for declaring in getattr(service, "__mro__", ()):
            if f"{method}_args" in vars(declaring):
                return self.of(declaring, method, *member)
        return None


def _read_docs(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return {}
    return parse_doc_comments(text)
