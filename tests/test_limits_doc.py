"""docs/limits.md lists every limit of the config classes, by its flag."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from offloop.client.config import ClientConfig
from offloop.codec.guard import DecodeLimits
from offloop.gateway.config import CallerLimits, FrontConfig
from offloop.worker.config import WorkerLimits

DOC = (Path(__file__).resolve().parents[1] / "docs" / "limits.md").read_text()

#: Fields that are not limits (what the front runs on, which protocol to speak, the path
#: prefix it is reached under).
NOT_LIMITS = {
    "server",
    "protocol",
    "transport",
    "write_buffer_high",
    "retry_after",
    "decode",
    "root_path",
}


def _flag(cls: type, field: dataclasses.Field[object], prefix: str) -> str:
    name = field.metadata.get("flag", field.name)
    return "--" + prefix + name.replace("_", "-")


CASES = [
    (cls, prefix, f)
    for cls, prefix in (
        (WorkerLimits, ""),
        (FrontConfig, ""),
        (ClientConfig, ""),
        (DecodeLimits, "decode-"),
        (CallerLimits, "caller-"),
    )
    for f in dataclasses.fields(cls)
    if f.name not in NOT_LIMITS
]


@pytest.mark.parametrize(("cls", "prefix", "field"), CASES, ids=lambda v: getattr(v, "name", ""))
def test_every_limit_is_in_the_table(
    cls: type, prefix: str, field: dataclasses.Field[object]
) -> None:
    flag = _flag(cls, field, prefix)
    assert f"`{flag}`" in DOC, f"{cls.__name__}.{field.name} ({flag}) is not in docs/limits.md"
