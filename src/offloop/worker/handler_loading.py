"""Loading a worker's handler from ``module:Name``, with errors that say why and where.

A class is instantiated with no arguments; any other object is used as it is. A handler that
cannot be loaded raises one :class:`HandlerError` line naming the handler, the error's type and,
when it comes from the user's code, the file and line.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from offloop.errors import Blame, OffloopError

__all__ = ["HandlerError", "describe_failure", "import_handler", "load_handler", "use_app_dir"]


class HandlerError(OffloopError, ImportError):
    """The handler cannot be loaded: its module does not import (missing, a ``SyntaxError``,
    an ``ImportError`` inside it), lacks the attribute, or building it raised.

    ``str(exc)`` is one line naming the handler, the error's type and, when the error comes
    from the user's code, the file and line: ``cannot load handler 'shop:Handler':
    SyntaxError at shop.py:3: invalid syntax``. The original exception is ``__cause__``.
    An ``ImportError`` too, for code that caught what ``load_handler`` used to raise.
    """

    blame = Blame.CALLER
    PUBLIC = None


def load_handler(spec: str, app_dir: str | None = None) -> Any:
    """Import ``module:attr`` and build the handler from it.

    The object named is used as follows: a class is instantiated with no arguments; any other
    object (an instance, a module) is used as it is. Nothing else is called, except the
    optional ``setup_pool(pool, workers)`` hook that :class:`DispatcherFactory` calls.

    Args:
        spec: ``package.module:Name`` (``Name`` may be dotted: ``module:Outer.Inner``).
        app_dir: a directory to import from, put first on ``sys.path`` if it is not there
            (``None``: ``sys.path`` as it is).

    Raises:
        HandlerError: the module does not import, lacks the attribute, or the class's
            ``__init__`` raised; one line says which and where.
    """
    obj = import_handler(spec, app_dir)
    if not isinstance(obj, type):
        return obj
    try:
        return obj()
    except Exception as exc:
        raise HandlerError(describe_failure(spec, exc)) from exc


def use_app_dir(app_dir: str | None) -> None:
    """Put ``app_dir`` (made absolute) first on ``sys.path`` unless it is already there, as
    uvicorn's ``--app-dir`` does; ``None`` or an empty string leaves ``sys.path`` alone."""
    if not app_dir:
        return
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


def import_handler(spec: str, app_dir: str | None = None) -> Any:
    """The object ``module:attr`` names, not instantiated.

    Raises:
        HandlerError: the spec is malformed, or the module does not import, or it lacks the
            attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler must look like 'package.module:Name', got {spec!r}")
    use_app_dir(app_dir)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # SyntaxError, ImportError, or whatever the module raised
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            where = f"in {os.path.abspath(app_dir)} nor " if app_dir else ""
            hint = f" (not {where}on the import path; --app-dir says where to look)"
        raise HandlerError(describe_failure(spec, exc) + hint) from exc
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if i == 0:
                owner = f"module {module_name!r}"
            else:
                owner = repr(module_name + ":" + ".".join(attr.split(".")[:i]))
            raise HandlerError(
                f"cannot load handler {spec!r}: {owner} has no attribute {part!r}"
            ) from None
    return obj


def describe_failure(spec: str, exc: BaseException) -> str:
    """``cannot load handler 'mod:Cls': SyntaxError at mod.py:3: invalid syntax``: the
    error's type, where in the user's code it happened (when it did), its message."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {_shown_path(exc.filename)}:{exc.lineno}"
        message = exc.msg
    else:
        message = str(exc)
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not frame.filename.startswith(("<", _IMPORTLIB)) and frame.filename != __file__
        ]
        if frames:
            where = f" at {_shown_path(frames[-1].filename)}:{frames[-1].lineno}"
            if frames[-1].name not in ("<module>", "<lambda>"):
                where += f" in {frames[-1].name}"
    text = f"cannot load handler {spec!r}: {type(exc).__name__}{where}: {message}"
    return " ".join(text.split())  # one line, whatever the message held


#: Where the import machinery's own frames come from: never the place of a handler's error.
_IMPORTLIB = os.path.dirname(importlib.__file__) + os.sep


def _shown_path(filename: str) -> str:
    """A file's path relative to the current directory when it is below it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative
