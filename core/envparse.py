"""Strict parsing of configuration from environment variables.

A malformed value stops start-up with ImproperlyConfigured naming the variable, instead of
silently reading "false" as true or an empty list as one empty host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use one of {sorted(TRUE | FALSE)}.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={raw!r} is not a finite number.")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    items = [item.strip() for item in raw.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"{name}={raw!r} has an empty item; separate values with single commas.")
    return items


def parse_networks(name: str, values: Iterable[str]) -> tuple[IPv4Network | IPv6Network, ...]:
    """Networks in CIDR notation (`10.20.0.0/16`, `fd00::/8`); a malformed one stops start-up naming `name`."""
    networks = []
    for value in values:
        try:
            networks.append(ip_network(str(value).strip()))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: {value!r} is not a network in CIDR notation such as 10.20.0.0/16 or fd00::/8 ({exc})."
            ) from None
    return tuple(networks)


def env_networks(name: str, default: list[str] | tuple[str, ...] = ()) -> list[IPv4Network | IPv6Network]:
    """A comma-separated list of networks in CIDR notation (`10.20.0.0/16,fd00::/8`)."""
    return list(parse_networks(name, env_list(name, list(default))))


def parse_database_url(name: str, url: str) -> dict:
    """Turn `postgres://user:pass@host:port/db` or `sqlite:////absolute/path` into a DATABASES entry."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:////srv/db.sqlite3: the third slash ends the (empty) host, the path is absolute.
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        if parts.netloc or not path.startswith("/") or path.rstrip("/") == "":
            raise ImproperlyConfigured(f"{name}={url!r}: use sqlite:////absolute/path.sqlite3.")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    if scheme in {"postgres", "postgresql", "pgsql"}:
        db_name = unquote(parts.path.lstrip("/"))
        if not db_name or "/" in db_name:
            raise ImproperlyConfigured(f"{name}={url!r} names no database (postgres://user:pass@host:5432/name).")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"{name}={url!r} has an invalid port.") from None
        query = {key: values[-1] for key, values in parse_qs(parts.query, strict_parsing=False).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db_name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "OPTIONS": query,
        }
    raise ImproperlyConfigured(f"{name}={url!r}: scheme must be postgres:// or sqlite://.")
