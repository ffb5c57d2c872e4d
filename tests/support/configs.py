"""Config variants for tests: set nested config fields by their flag names.

``override(config, workers=2, port=0, admin_port=0, pool="thread")`` finds each name among the
leaf fields of the config's dataclass tree by the name its command-line flag has, in snake
case (``--workers`` is ``pool.workers``, ``--admin-port`` is ``admin.port``, ``--pool`` is
``pool.kind``), and replaces it with :func:`dataclasses.replace`, level by level. A dotted
path (``**{"limits.max_queued": 0}``) names a field directly. A name that matches no field is
an error, so a test cannot set the wrong one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["override"]

C = TypeVar("C")


def _leaves(cls: Any, prefix: str = "", path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Flag name (snake case) and dotted path -> path, for every field of ``cls``'s tree."""
    found: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        here = (*path, f.name)
        found[".".join(here)] = here
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            inner = prefix + f.metadata.get("prefix", "").replace("-", "_")
            found.update({k: v for k, v in _leaves(type(default), inner, here).items()})
        else:
            found.setdefault(prefix + f.metadata.get("flag", f.name).replace("-", "_"), here)
    return found


def _replace(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    head, *rest = path
    if rest:
        value = _replace(getattr(obj, head), tuple(rest), value)
    return dataclasses.replace(obj, **{head: value})


def override(config: C, **values: Any) -> C:
    """``config`` with the named fields replaced; see the module docstring."""
    leaves = _leaves(type(config))
    for name, value in values.items():
        path = leaves.get(name)
        if path is None:
            raise TypeError(f"{type(config).__name__} has no setting {name!r}")
        config = _replace(config, path, value)
    return config
