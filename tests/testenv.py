"""Loaded with `-p tests.testenv` before Django's settings: points them at the test services.

The suite runs against a real PostgreSQL and Redis (scripts/ensure-services starts them).
Override with RINGFENCE_TEST_DATABASE_URL / RINGFENCE_TEST_REDIS_URL.
"""

from __future__ import annotations

import os
import tempfile

os.environ["RINGFENCE_TESTING"] = "1"
os.environ["DATABASE_URL"] = os.environ.get(
    "RINGFENCE_TEST_DATABASE_URL", "postgres://ringfence:ringfence@127.0.0.1:5432/ringfence"
)
_redis = os.environ.get("RINGFENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Under pytest-xdist (`make test` runs two processes) each worker gets the next Redis database
# after the run's, as pytest-django gives it its own test database (<name>_gw0, <name>_gw1 …).
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    _base, _, _db = _redis.rpartition("/")
    _redis = f"{_base}/{int(_db or 0) + int(_worker[2:])}"
os.environ["CELERY_BROKER_URL"] = _redis
os.environ["REDIS_URL"] = _redis
os.environ.setdefault("AUDIT_CHECKPOINT_KEY", "test-checkpoint-key-" + "k" * 40)
os.environ.setdefault("SECRET_KEY", "test-secret-key-" + "s" * 50)
os.environ.setdefault("ROLLOUT_WEBHOOK_SECRET", "test-webhook-secret-" + "w" * 40)
# Fixtures issue tokens at frozen past dates and use them today: the tests of token expiry set their own.
os.environ.setdefault("API_TOKEN_MAX_DAYS", "36500")
# The suite's webhook, executor and callback receivers listen on loopback, which Ringfence refuses to
# send to unless allowed (core.outbound); the tests of those refusals empty the list themselves.
os.environ.setdefault("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
os.environ.setdefault("AUDIT_SIGNING_KEY", "dGVzdC1zaWduaW5nLWtleS0zMi1ieXRlcy1sb25nLSE=")  # 32 bytes
os.environ.setdefault("RINGFENCE_VAR_DIR", tempfile.mkdtemp(prefix="ringfence-test-var-"))
os.makedirs(os.path.join(os.environ["RINGFENCE_VAR_DIR"], "staticfiles"), exist_ok=True)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
