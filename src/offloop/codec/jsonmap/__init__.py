"""The JSON mapping of Thrift values, both ways, sans-I/O.

The gateway calls this on every request, so each Thrift type is compiled once into a pair of
small functions (decode from JSON, encode to JSON) and kept: on the struct class itself for
structs and exceptions (so that it goes when the class goes), in a small LRU cache for other
specs. Values are "decoded JSON": what :func:`json.loads` returns, and what
:func:`json.dumps` accepts.

The mapping:

============================  ======================================  ===========================
Thrift                        JSON out (``value_to_json``)            JSON in (``value_from_json``)
============================  ======================================  ===========================
``bool``                      ``true`` / ``false``                    the same; not ``0`` / ``1``
``byte`` ``i8`` ``i16``       integer                                 integer in range (not a bool;
``i32``                                                               ``45.0`` counts, ``45.5``
                                                                      does not)
``i64``                       integer                                 the same, or a decimal
                                                                      string
``double``                    number; ``"NaN"``, ``"Infinity"``,      the same; integers too; not
                              ``"-Infinity"``                         ``1e400`` (out of range)
``string``                    string                                  string (valid Unicode)
``binary``                    base64 string (standard alphabet,       the same, strictly checked
                              padded)
enum                          its name (unknown values: the integer)  name or integer value
struct, exception             object by field name; unset (``None``)  the same; unknown field,
                              fields left out; a ``required`` one     missing required field and
                              unset is an error (``ReplyBreaksIdl``)  ``null`` are errors;
                                                                      defaults applied
``list``                      array                                   array
``set``                       array, sorted where sortable            array (duplicates merge)
``map``, key string           object                                  object
``map``, key enum             object keyed by enum name               keys: name or decimal value
``map``, key integer          object keyed by decimal string          the same, range-checked
``map``, any other key        array of ``[key, value]`` pairs         the same
============================  ======================================  ===========================

A method's arguments (:func:`args_from_json`) follow the struct rule, but for which must be
given: every argument unless the IDL marks it ``optional`` or gives it a default
(:func:`offloop.idl_requiredness.required_arguments`). Struct fields must be given where the
IDL marks them ``required`` (what Thrift's own readers check); the same rule holds on the way
out, where a reply missing one raises :class:`ReplyBreaksIdl`. ``null`` is never a value:
leave an optional argument or field out instead. :mod:`offloop.gateway.openapi` says the same
(its ``required`` lists; no schema of an argument or a field allows ``null``).

Typedefs need nothing: thriftpy2 resolves them when it parses the IDL.

Integers written as floats: JSON Schema counts ``45.0`` as an integer, and so does the mapping,
while the float is exact (below 2**53 in magnitude); past that, a float no longer holds every
integer (``9007199254740993.0`` parses as ``...992``), so it is refused rather than rounded.

:func:`parse_json` reads a request body strictly (no ``NaN``/``Infinity`` literals, no
duplicate keys; errors are :class:`JsonSyntaxError`); its values are what the decoders expect.

Errors in input raise :class:`JsonMappingError` (status 400) with the path of the bad value:
``argument.`` then the argument name for :func:`args_from_json` (e.g.
``argument.xtructs[2].i32_thing``), the ``path`` given to :func:`value_from_json` otherwise.
Object-form map entries are addressed as ``m["key"]``, pair-form ones as ``m[3][0]`` (key) and
``m[3][1]`` (value). Paths are built only when something fails, so good input pays nothing for
them.
"""

from offloop.codec.jsonmap._api import (
    ARGUMENT_ROOT,
    Outcome,
    args_from_json,
    args_to_json,
    result_to_json,
    struct_from_json,
    struct_to_json,
    value_from_json,
    value_to_json,
)
from offloop.codec.jsonmap._errors import (
    MAX_DEPTH,
    JsonEncodeError,
    JsonMappingError,
    ReplyBreaksIdl,
)
from offloop.codec.jsonmap._parse import JsonSyntaxError, parse_json
from offloop.codec.jsonmap._specs import (
    MapForm,
    is_enum,
    map_form,
    split_elem_spec,
    split_field_spec,
)

__all__ = [
    "ARGUMENT_ROOT",
    "MAX_DEPTH",
    "JsonEncodeError",
    "JsonMappingError",
    "JsonSyntaxError",
    "MapForm",
    "Outcome",
    "ReplyBreaksIdl",
    "args_from_json",
    "args_to_json",
    "is_enum",
    "map_form",
    "parse_json",
    "result_to_json",
    "split_elem_spec",
    "split_field_spec",
    "struct_from_json",
    "struct_to_json",
    "value_from_json",
    "value_to_json",
]
