"""ACL-08: with production-like environment variables, `manage.py check --deploy --fail-level
WARNING` passes with no warning at all (run as its own process, as an operator would)."""

from __future__ import annotations

from tests.governance.support import manage, production_env


def test_deploy_checks_pass_without_a_single_warning(tmp_path, figures):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    warnings = output.count("?: (") + output.count(": (security.")
    figures(f"ACL-08 check --deploy exit={result.returncode} warnings={warnings}")
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
