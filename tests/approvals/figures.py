"""Figures a test measured, printed on the terminal even when pytest captures output."""

from __future__ import annotations

import statistics

import pytest


def report(request: pytest.FixtureRequest, name: str, **figures: object) -> None:
    text = f"[figures] {name}: " + ", ".join(f"{key}={value}" for key, value in figures.items())
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]
