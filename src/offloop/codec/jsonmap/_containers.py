"""The codecs of containers: lists, sets, and maps in object or pair form.

Each is built from the codecs of its elements. Every array or object counts one level of
depth against :data:`MAX_DEPTH` (a pair-form map two: the array and its pairs), and a fault in
an element gets the element's path segment on its way out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from offloop.codec.jsonmap._errors import (
    MAX_DEPTH,
    Fault,
    fault_at,
    key_segment,
    show,
    too_deep,
)
from offloop.codec.jsonmap._scalars import Dec, Enc, identity

__all__ = ["list_codec", "object_map_codec", "pairs_map_codec", "set_codec"]


def list_codec(edec: Dec, eenc: Enc) -> tuple[Dec, Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise Fault(f"expected an array, got {show(value)}")
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for item in value:
                append(edec(item, depth))
        except Fault as fault:
            fault.segments.append(f"[{len(out)}]")
            raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise too_deep()
        if eenc is identity:
            return list(value)
        depth += 1
        return [eenc(item, depth) for item in value]

    return dec, enc


def set_codec(edec: Dec, eenc: Enc) -> tuple[Dec, Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise Fault(f"expected an array, got {show(value)}")
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        out: set[Any] = set()
        add = out.add
        for index, item in enumerate(value):
            try:
                add(edec(item, depth))
            except Fault as fault:
                fault.segments.append(f"[{index}]")
                raise
            except TypeError:
                raise fault_at(f"[{index}]", "set elements of this type cannot be hashed") from None
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise too_deep()
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        if eenc is identity:
            return items
        depth += 1
        return [eenc(item, depth) for item in items]

    return dec, enc


def object_map_codec(
    kdec: Callable[[str], Any], kenc: Callable[[Any], str], vdec: Dec, venc: Enc
) -> tuple[Dec, Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, dict):
            raise Fault(f"expected an object, got {show(value)}")
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        out: dict[Any, Any] = {}
        for key, item in value.items():
            try:
                out[kdec(key)] = vdec(item, depth)
            except Fault as fault:
                fault.segments.append(key_segment(key))
                raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise too_deep()
        depth += 1
        return {kenc(key): venc(item, depth) for key, item in value.items()}

    return dec, enc


def pairs_map_codec(kdec: Dec, kenc: Enc, vdec: Dec, venc: Enc) -> tuple[Dec, Enc]:
    def dec(value: Any, depth: int) -> Any:
        if not isinstance(value, list):
            raise Fault(f"expected an array of [key, value] pairs, got {show(value)}")
        if depth + 1 >= MAX_DEPTH:
            raise too_deep()
        depth += 2
        out: dict[Any, Any] = {}
        for index, pair in enumerate(value):
            try:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise Fault(f"expected a [key, value] pair, got {show(pair)}")
                try:
                    key = kdec(pair[0], depth)
                except Fault as fault:
                    fault.segments.append("[0]")
                    raise
                try:
                    item = vdec(pair[1], depth)
                except Fault as fault:
                    fault.segments.append("[1]")
                    raise
                try:
                    out[key] = item
                except TypeError:
                    raise Fault("map keys of this type cannot be hashed") from None
            except Fault as fault:
                fault.segments.append(f"[{index}]")
                raise
        return out

    def enc(value: Any, depth: int) -> Any:
        if depth + 1 >= MAX_DEPTH:
            raise too_deep()
        depth += 2
        return [[kenc(key, depth), venc(item, depth)] for key, item in value.items()]

    return dec, enc
