"""Settings only read: importing them writes nothing, and with DATABASE_URL set every secret must
come from the environment (the zero-setup files are `make run`'s, made by scripts/devserver.py)."""

from __future__ import annotations

import pytest

from core import zero_setup
from tests.governance.support import manage, production_env


@pytest.mark.parametrize("secret", ["SECRET_KEY", "AUDIT_CHECKPOINT_KEY", "ROLLOUT_WEBHOOK_SECRET"])
def test_a_production_start_without_a_secret_is_refused_naming_it(tmp_path, secret):
    env = production_env(tmp_path)
    del env[secret]
    result = manage(env, "check")
    assert result.returncode != 0
    assert f"{secret} must be set when DATABASE_URL is set." in result.stderr
    assert not (tmp_path / "var").exists(), "settings wrote into var/"


def test_zero_setup_settings_write_nothing_and_read_what_make_run_prepared(tmp_path):
    env = production_env(tmp_path)
    for name in ("DATABASE_URL", "SECRET_KEY", "AUDIT_CHECKPOINT_KEY", "ROLLOUT_WEBHOOK_SECRET", "HTTPS"):
        env.pop(name, None)
    var = tmp_path / "var"
    result = manage(env, "shell", "-c", "from django.conf import settings; print(len(settings.SECRET_KEY))")
    assert result.returncode == 0, result.stderr
    assert "uses a one-off key" in result.stderr
    assert not var.exists(), "settings wrote into var/"

    made = zero_setup.prepare(var)
    assert sorted(made) == sorted(zero_setup.SECRETS)
    assert all((var / filename).stat().st_mode & 0o077 == 0 for filename, _ in zero_setup.SECRETS.values())
    printed = manage(env, "shell", "-c", "from django.conf import settings; print(settings.ROLLOUT_WEBHOOK_SECRET)")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[-1] == (var / "rollout_webhook_secret").read_text()
    assert "one-off key" not in printed.stderr
    assert zero_setup.prepare(var) == [], "a second prepare replaced a secret"
