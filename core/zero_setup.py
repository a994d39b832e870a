"""The zero-setup mode's folder and secrets (`make run` with nothing configured).

Settings never write files: `scripts/devserver.py` calls `prepare()` before it starts anything, so
the web server, the worker and beat all read the same secrets from `var/`. Standard library only
(it runs before Django is configured).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

# setting -> (file under var/, how a new one is made)
SECRETS = {
    "SECRET_KEY": ("secret_key", lambda: secrets.token_urlsafe(64)),
    "AUDIT_CHECKPOINT_KEY": ("audit_checkpoint_key", lambda: secrets.token_hex(32)),
    "ROLLOUT_WEBHOOK_SECRET": ("rollout_webhook_secret", lambda: secrets.token_hex(32)),
    "AUDIT_SIGNING_KEY": ("audit_signing_key", lambda: base64.b64encode(secrets.token_bytes(32)).decode()),
}
FOLDERS = ("staticfiles", "celery/queue", "celery/processed", "celery/control", "mail")


def prepare(var_dir: Path) -> list[str]:
    """Create var/, its folders and any missing secret (readable by its owner only); returns the
    names of the secrets made now."""
    made = []
    for folder in FOLDERS:
        (var_dir / folder).mkdir(parents=True, exist_ok=True)
    for name, (filename, make) in SECRETS.items():
        path = var_dir / filename
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(make())
            made.append(name)
    return made


def read_secret(var_dir: Path, name: str) -> str | None:
    """The zero-setup value of a secret setting, if `prepare()` has made it."""
    path = var_dir / SECRETS[name][0]
    return path.read_text().strip() if path.exists() else None


if __name__ == "__main__":  # `python -m core.zero_setup`: prepare RINGFENCE_VAR_DIR (default var/)
    import os

    prepare(Path(os.environ.get("RINGFENCE_VAR_DIR", "var")))
