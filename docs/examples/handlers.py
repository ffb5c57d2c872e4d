"""The handler of the Echo service: one method per IDL method, arguments in IDL order."""

import time
from pathlib import Path

IDL = str(Path(__file__).with_name("echo.thrift"))


class Echo:
    def echo(self, text: str) -> str:
        return text

    def add(self, a: int, b: int) -> int:
        return a + b

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def fail(self, why: str) -> None:
        raise ValueError(why)
