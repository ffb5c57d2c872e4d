"""The pool contract's pieces that need no pool: JobFailed as text, across a pickle."""

from __future__ import annotations

import pickle

from offloop.errors import OffloopError
from offloop.runtime import JobFailed


def _failure() -> JobFailed:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        return JobFailed.from_exception(exc)


def test_job_failed_describes_the_exception_as_text() -> None:
    failed = _failure()
    assert isinstance(failed, OffloopError)
    assert (failed.type_name, failed.message) == ("KeyError", "'missing'")
    assert str(failed) == "KeyError: 'missing'"
    assert 'raise KeyError("missing")' in failed.traceback_text


def test_job_failed_survives_a_pickle() -> None:
    failed = _failure()
    copy = pickle.loads(pickle.dumps(failed))
    assert (copy.type_name, copy.message, copy.traceback_text) == (
        failed.type_name,
        failed.message,
        failed.traceback_text,
    )
    assert str(copy) == str(failed)


def test_job_failed_without_a_message_is_its_type_name() -> None:
    assert str(JobFailed("StopIteration", "")) == "StopIteration"


def test_unprintable_exception_still_fails_the_job() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert JobFailed.from_exception(Unprintable()).message == "<unprintable Unprintable>"
