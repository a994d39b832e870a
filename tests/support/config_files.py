"""Driving `manage.py config` from tests: write a ringfence.yaml, run a subcommand, read its answer."""

from __future__ import annotations

import io
import textwrap

from django.core.management import call_command


def run(*args: str) -> tuple[int, str, str]:
    """`manage.py config *args`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("config", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def write(tmp_path, text: str, name: str = "ringfence.yaml") -> str:
    """`text` (dedented) as a file in `tmp_path`; its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)
