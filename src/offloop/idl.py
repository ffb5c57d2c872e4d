"""Thrift IDL loaded at run time (thriftpy2), and what offloop needs to know of its services.

No code generation: ``load_idl`` parses the ``.thrift`` file into a module of Python classes,
and :class:`ServiceInfo` / :class:`MethodInfo` describe each service's methods: argument and
result structs, declared exceptions, oneway-ness.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import thriftpy2

from offloop.errors import OffloopError

__all__ = [
    "IdlError",
    "MethodInfo",
    "ServiceInfo",
    "included_modules",
    "load_idl",
    "service_info",
]


class IdlError(OffloopError):
    """The IDL file cannot be loaded, or does not declare what was asked for."""


@dataclass(frozen=True)
class MethodInfo:
    """One method of a Thrift service.

    Attributes:
        name: the method name, as on the wire.
        args_cls: the generated ``<name>_args`` struct class.
        result_cls: the generated ``<name>_result`` struct class.
        oneway: whether the method sends no reply.
        arg_names: argument names in declaration order.
        exceptions: declared exceptions, as (field name, exception class) in declaration order.
    """

    name: str
    args_cls: Any
    result_cls: Any
    oneway: bool
    arg_names: tuple[str, ...]
    exceptions: tuple[tuple[str, Any], ...]

    @functools.cached_property
    def returns_void(self) -> bool:
        """Whether the method has no return value (``void``); read on every call, so
        computed once."""
        return not any(spec[1] == "success" for spec in self.result_cls.thrift_spec.values())


@dataclass(frozen=True)
class ServiceInfo:
    """One Thrift service: its class in the loaded module and its methods by name.

    Attributes:
        name: the service name.
        service: the service's class in the loaded module.
        methods: its methods (inherited ones too), by name.
        module: the loaded IDL module it was found in, where the OpenAPI document finds the
            ``.thrift`` files to read doc comments from; ``None`` when unknown.
    """

    name: str
    service: Any
    methods: dict[str, MethodInfo]
    module: ModuleType | None = field(default=None, repr=False, compare=False)


def load_idl(path: str | os.PathLike[str]) -> ModuleType:
    """Parse a ``.thrift`` file into a module of Python classes, once per file.

    The module is cached by the file's resolved path (symbolic links and relative paths
    resolved): every call for the same file in a process returns the same module, the one the
    worker dispatches with. A handler that takes its exception and struct classes from
    ``offloop.load_idl(path)`` therefore raises and returns the worker's own classes.

    Raises:
        IdlError: the file is missing or does not parse.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        # The absolute path: a relative one resolves against the current directory, which
        # is not always the one the caller expects (``--app-dir``, a service manager).
        tried = os.path.abspath(path)
        given = "" if tried == path else f" (given as {path!r})"
        raise IdlError(f"IDL file not found: {tried}{given}")
    resolved = os.path.realpath(path)
    with _LOADED_LOCK:
        module = _LOADED.get(resolved)
        if module is not None:
            return module
        base = os.path.splitext(os.path.basename(resolved))[0]
        # A module name unique to the file's path, so that two IDLs of the same base name in
        # one process do not replace each other; thriftpy2 requires the "_thrift" suffix.
        digest = hashlib.sha1(resolved.encode()).hexdigest()[:8]
        try:
            loaded: ModuleType = thriftpy2.load(resolved, module_name=f"{base}_{digest}_thrift")
        except Exception as exc:
            raise IdlError(f"cannot load IDL {path}: {exc}") from exc
        _LOADED[resolved] = loaded
        return loaded


#: Loaded IDL modules by resolved path (:func:`load_idl`); a process loads a handful of IDLs.
_LOADED: dict[str, ModuleType] = {}
_LOADED_LOCK = threading.Lock()


def included_modules(modules: Iterable[ModuleType]) -> list[ModuleType]:
    """Loaded IDL modules and those they include, transitively, each once, in include order."""
    found: list[ModuleType] = []
    seen: set[int] = set()
    pending = deque(modules)
    while pending:
        module = pending.popleft()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append(module)
        pending.extend(getattr(module, "__thrift_meta__", {}).get("includes", ()))
    return found


def service_names(module: ModuleType) -> list[str]:
    """Names of the services the loaded IDL declares, in file order."""
    return [s.__name__ for s in getattr(module, "__thrift_meta__", {}).get("services", [])]


def service_info(module: ModuleType, name: str) -> ServiceInfo:
    """Describe service ``name`` of a loaded IDL module.

    Raises:
        IdlError: the IDL has no such service.
    """
    service = getattr(module, name, None)
    if service is None or not hasattr(service, "thrift_services"):
        known = ", ".join(service_names(module)) or "none"
        raise IdlError(f"IDL declares no service {name!r} (services: {known})")
    methods: dict[str, MethodInfo] = {}
    for mname in service.thrift_services:
        args_cls = getattr(service, mname + "_args")
        result_cls = getattr(service, mname + "_result")
        arg_names = tuple(spec[1] for _, spec in sorted(args_cls.thrift_spec.items()))
        exceptions = tuple(
            (spec[1], spec[2])
            for _, spec in sorted(result_cls.thrift_spec.items())
            if spec[1] != "success"
        )
        methods[mname] = MethodInfo(
            name=mname,
            args_cls=args_cls,
            result_cls=result_cls,
            oneway=bool(getattr(result_cls, "oneway", False)),
            arg_names=arg_names,
            exceptions=exceptions,
        )
    return ServiceInfo(name=name, service=service, methods=methods, module=module)
