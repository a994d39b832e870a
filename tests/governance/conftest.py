"""Fixtures for the governance tests.

`figures(line)` prints a measured figure and repeats it in a "Ringfence figures" section at the
end of the run, so the numbers the reliability plan asks for are visible in every test run.
"""

from __future__ import annotations

import pytest

FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figures(request):
    def report(line: str) -> None:
        FIGURES.append((request.node.name, line))
        print(line)

    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("Ringfence figures (tests/governance)")
    for name, line in FIGURES:
        terminalreporter.write_line(f"{name}: {line}")
