"""Settings come from the environment only and are parsed strictly: a malformed value stops start-up
with a message that names the variable, instead of being read as something else."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from core import envparse
from tests.governance.support import manage, production_env

VAR = "RINGFENCE_PARSE_PROBE"


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("YES", True), (" on ", True), ("1", True),
    ("false", False), ("No", False), ("off", False), ("0", False), ("", None), ("  ", None),
])
def test_booleans_accept_only_the_documented_words(monkeypatch, raw, expected):
    monkeypatch.setenv(VAR, raw)
    default = object()
    assert envparse.env_bool(VAR, default) is (default if expected is None else expected)


@pytest.mark.parametrize("parse, raw, message", [
    (lambda: envparse.env_bool(VAR, False), "maybe", "is not a boolean"),
    (lambda: envparse.env_bool(VAR, False), "tru", "is not a boolean"),
    (lambda: envparse.env_int(VAR, 1), "5s", "is not an integer"),
    (lambda: envparse.env_int(VAR, 1), "1.5", "is not an integer"),
    (lambda: envparse.env_int(VAR, 1, minimum=1), "0", "below the minimum"),
    (lambda: envparse.env_float(VAR, 1.0), "fast", "is not a number"),
    (lambda: envparse.env_float(VAR, 1.0), "nan", "not a finite number"),
    (lambda: envparse.env_float(VAR, 1.0), "inf", "not a finite number"),
    (lambda: envparse.env_float(VAR, 1.0, minimum=0.1), "0.01", "below the minimum"),
    (lambda: envparse.env_list(VAR, []), "a.example,,b.example", "empty item"),
    (lambda: envparse.env_list(VAR, []), "a.example,", "empty item"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "mysql://u:p@h/db", "scheme must be"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "postgres://u:p@h:5432/", "names no database"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "postgres://u:p@h:port/db", "invalid port"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "sqlite://relative.db", "sqlite:////"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "sqlite:///relative.db", "sqlite:////"),
    (lambda: envparse.parse_database_url(VAR, envparse.env_str(VAR)), "sqlite:////", "sqlite:////"),
])
def test_a_malformed_value_is_refused_with_the_variable_named(monkeypatch, parse, raw, message):
    monkeypatch.setenv(VAR, raw)
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        parse()
    assert VAR in str(info.value)


def test_unset_values_fall_back_to_their_defaults(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    assert envparse.env_int(VAR, 7) == 7
    assert envparse.env_float(VAR, 0.5) == 0.5
    assert envparse.env_list(VAR, ["localhost"]) == ["localhost"]
    assert envparse.env_str(VAR, "x") == "x"


def test_database_urls_are_parsed_into_django_settings():
    pg = envparse.parse_database_url("DATABASE_URL", "postgres://app:p%40ss@db.internal:6543/ringfence?sslmode=require")
    assert pg == {"ENGINE": "django.db.backends.postgresql", "NAME": "ringfence", "USER": "app", "PASSWORD": "p@ss",
                  "HOST": "db.internal", "PORT": "6543", "OPTIONS": {"sslmode": "require"}}
    sqlite = envparse.parse_database_url("DATABASE_URL", "sqlite:////srv/ringfence/db.sqlite3")
    assert sqlite == {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/ringfence/db.sqlite3"}


@pytest.mark.parametrize("variable, value, message", [
    ("DEBUG", "sometimes", "DEBUG='sometimes' is not a boolean"),
    ("DATABASE_CONNECT_TIMEOUT", "five", "DATABASE_CONNECT_TIMEOUT='five' is not an integer"),
    ("SECRET_KEY", "short", "SECRET_KEY must be at least 50 characters"),
    ("AUDIT_CHECKPOINT_KEY", "", "AUDIT_CHECKPOINT_KEY must be set"),
])
def test_start_up_stops_with_a_message_naming_the_variable(tmp_path, variable, value, message):
    result = manage(production_env(tmp_path, **{variable: value}), "check")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
