"""Compiling a Thrift type into its codec pair, struct codecs, and where compiled codecs live.

Each type is compiled once. A struct's codec (:class:`_StructCodec`) is kept on the struct
class itself, so that it goes when the class goes and no module-level registry grows as IDLs
are loaded; the codecs of other specs are kept in a small LRU cache (:func:`compiled`).
Structs may be recursive, so a struct codec is built in two steps and the codecs built during
one compilation are published on their classes only once all of them are complete.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from thriftpy2.thrift import TType

from offloop.codec.jsonmap._containers import (
    list_codec,
    object_map_codec,
    pairs_map_codec,
    set_codec,
)
from offloop.codec.jsonmap._errors import (
    MAX_DEPTH,
    Fault,
    MissingRequired,
    fault_at,
    field_segment,
    show,
    too_deep,
)
from offloop.codec.jsonmap._scalars import (
    Dec,
    Enc,
    dec_binary,
    dec_bool,
    dec_double,
    dec_string,
    enc_binary,
    enc_double,
    enc_string,
    enum_codec,
    enum_key_codec,
    identity,
    int_codec,
    int_key_codec,
    string_key_dec,
    string_key_enc,
)
from offloop.codec.jsonmap._specs import (
    INT_RANGES,
    STRING_TYPES,
    is_enum,
    map_form,
    split_elem_spec,
    split_field_spec,
)
from offloop.idl_requiredness import required_arguments

__all__ = ["compiled", "compiled_struct"]

# Where a compiled struct codec is kept on its class: it lives and dies with the class, and no
# module-level registry grows as IDLs are loaded.
_CODEC_ATTR: Final = "_offloop_json_codec"
_ARGS_CODEC_ATTR: Final = "_offloop_json_args_codec"

_IMMUTABLE: Final = (type(None), bool, int, float, str, bytes)


# -- structs --------------------------------------------------------------------------------


class _StructCodec:
    """The compiled codec of one struct, exception or ``<method>_args`` class.

    Built in two steps so that a recursive struct can refer to itself: the instance exists
    (and is findable) before its fields are compiled.
    """

    __slots__ = (
        "cls",
        "decoders",
        "encoder_map",
        "encoders",
        "fresh_defaults",
        "noun",
        "owner",
        "required",
        "required_out",
    )

    def __init__(self, cls: Any, *, arguments: bool) -> None:
        self.cls = cls
        self.noun = "argument" if arguments else "field"
        name: str = cls.__name__
        self.owner = name.removesuffix("_args") if arguments else name
        self.decoders: dict[str, Dec] = {}
        self.encoders: tuple[tuple[str, Enc], ...] = ()
        self.encoder_map: dict[str, Enc] = {}
        self.required: tuple[str, ...] = ()
        # The fields the IDL marks required: a value to encode that lacks one breaks the IDL.
        self.required_out: frozenset[str] = frozenset()
        self.fresh_defaults: tuple[tuple[str, Any], ...] = ()

    def build(self, pending: dict[Any, _StructCodec]) -> None:
        decoders: dict[str, Dec] = {}
        encoders: list[tuple[str, Enc]] = []
        required: list[str] = []
        for field in self.cls.thrift_spec.values():
            name = field[1]
            ttype, spec = split_field_spec(field)
            dec, enc = _compile(ttype, spec, pending)
            decoders[name] = dec
            encoders.append((name, enc))
            if field[-1] is True:
                required.append(name)
        self.required_out = frozenset(required)
        if self.noun == "argument":
            # An argument must be sent unless the IDL marks it optional or gives it a
            # default; thriftpy2 cannot tell "optional" from the default requiredness.
            required = list(required_arguments(self.cls))
        # thriftpy2's generated __init__ shares one default object among all instances; a
        # mutable default ([] or a struct) is copied so that decoded values never alias.
        fresh = tuple(
            (name, default)
            for name, default in getattr(self.cls, "default_spec", ())
            if not isinstance(default, _IMMUTABLE)
        )
        self.decoders = decoders
        self.encoders = tuple(encoders)
        self.encoder_map = dict(encoders)
        self.required = tuple(required)
        self.fresh_defaults = fresh

    def decode(self, value: Any, depth: int) -> Any:
        if not isinstance(value, dict):
            raise Fault(f"expected an object, got {show(value)}")
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        decoders = self.decoders
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            dec = decoders.get(key)
            if dec is None:
                raise fault_at(
                    field_segment(key),
                    f"unknown {self.noun} ({self.owner} has: {', '.join(decoders) or 'none'})",
                )
            if item is None:
                if key in self.required:
                    raise fault_at("." + key, f"required {self.noun} is null")
                raise fault_at("." + key, f"null is not a value; leave the {self.noun} out")
            try:
                kwargs[key] = dec(item, depth)
            except Fault as fault:
                fault.segments.append("." + key)
                raise
        for name in self.required:
            if name not in kwargs:
                raise fault_at("." + name, f"required {self.noun} is missing")
        for name, default in self.fresh_defaults:
            if name not in kwargs:
                kwargs[name] = copy.deepcopy(default)
        return self.cls(**kwargs)

    def encode(self, obj: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        out: dict[str, Any] = {}
        for name, enc in self.encoders:
            item = getattr(obj, name, None)
            if item is not None:
                out[name] = enc(item, depth)
            elif name in self.required_out:
                # A reply that breaks the IDL must not pass as a good one. Looked up only
                # for unset fields, so a value with every field set pays nothing for it.
                raise MissingRequired(self.owner, name)
        return out


def _struct_codec(cls: Any, pending: dict[Any, _StructCodec]) -> _StructCodec:
    codec: _StructCodec | None = cls.__dict__.get(_CODEC_ATTR) or pending.get(cls)
    if codec is None:
        codec = _StructCodec(cls, arguments=False)
        pending[cls] = codec
        codec.build(pending)
    return codec


def compiled_struct(cls: Any, *, arguments: bool = False) -> _StructCodec:
    """The codec of a struct class, compiled on first use and kept on the class.

    With ``arguments``, the codec of an ``<method>_args`` class, whose errors speak of
    arguments; it is kept apart from the plain codec of the same class.
    """
    attr = _ARGS_CODEC_ATTR if arguments else _CODEC_ATTR
    codec: _StructCodec | None = cls.__dict__.get(attr)
    if codec is not None:
        return codec
    pending: dict[Any, _StructCodec] = {}
    if arguments:
        codec = _StructCodec(cls, arguments=True)
        codec.build(pending)
    else:
        codec = _struct_codec(cls, pending)
    # Published only once every struct it reaches is complete, so another thread never sees
    # a half-built codec; two threads racing here build equal codecs, and either may win.
    for struct_cls, built in pending.items():
        setattr(struct_cls, _CODEC_ATTR, built)
    setattr(cls, attr, codec)
    return codec


# -- compiling ------------------------------------------------------------------------------


def _compile(ttype: int, spec: Any, pending: dict[Any, _StructCodec]) -> tuple[Dec, Enc]:
    if ttype == TType.BOOL:
        return dec_bool, identity
    if ttype in INT_RANGES:
        if is_enum(ttype, spec):
            return enum_codec(spec)
        return int_codec(ttype)
    if ttype == TType.DOUBLE:
        return dec_double, enc_double
    if ttype in STRING_TYPES:
        return dec_string, enc_string
    if ttype == TType.BINARY:
        return dec_binary, enc_binary
    if ttype == TType.STRUCT:
        codec = _struct_codec(spec, pending)
        return codec.decode, codec.encode
    if ttype in (TType.LIST, TType.SET):
        edec, eenc = _compile(*split_elem_spec(spec), pending)
        return list_codec(edec, eenc) if ttype == TType.LIST else set_codec(edec, eenc)
    if ttype == TType.MAP:
        ktype, kspec = split_elem_spec(spec[0])
        vdec, venc = _compile(*split_elem_spec(spec[1]), pending)
        form = map_form(ktype, kspec)
        if form == "pairs":
            kdec, kenc = _compile(ktype, kspec, pending)
            return pairs_map_codec(kdec, kenc, vdec, venc)
        if form == "string":
            return object_map_codec(string_key_dec, string_key_enc, vdec, venc)
        if form == "enum":
            return object_map_codec(*enum_key_codec(kspec), vdec, venc)
        return object_map_codec(*int_key_codec(ktype), vdec, venc)
    raise ValueError(f"unsupported Thrift type {ttype}")


@functools.lru_cache(maxsize=512)
def compiled(ttype: int, spec: Any) -> tuple[Dec, Enc]:
    """The codec pair of ``(ttype, spec)``, compiled on first use and cached."""
    if ttype == TType.STRUCT:
        codec = compiled_struct(spec)
        return codec.decode, codec.encode
    pending: dict[Any, _StructCodec] = {}
    pair = _compile(ttype, spec, pending)
    for struct_cls, built in pending.items():
        setattr(struct_cls, _CODEC_ATTR, built)
    return pair
