"""The e2e suite reports what it checked and how long each check took."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

CHECKED: list[tuple[str, float, str]] = []


@pytest.fixture
def check() -> Callable[[str], AbstractContextManager[None]]:
    """``with check("what"):`` times one acceptance check and records its outcome."""

    @contextmanager
    def run(what: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except BaseException:
            CHECKED.append((what, time.monotonic() - start, "FAILED"))
            raise
        CHECKED.append((what, time.monotonic() - start, "ok"))

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CHECKED:
        return
    terminalreporter.section("acceptance checks")
    for what, seconds, outcome in CHECKED:
        terminalreporter.write_line(f"{outcome:>6}  {seconds:6.2f}s  {what}")
