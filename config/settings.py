"""Ringfence settings: one module, every value from the environment (README lists them).

With nothing set, Ringfence runs in zero-setup mode: SQLite and Celery's filesystem transport
under `var/`, a secret key generated once into `var/`.
"""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path

import plotly
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from core import zero_setup
from core.envparse import env_bool, env_float, env_int, env_list, env_networks, env_str, parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("RINGFENCE_VAR_DIR", str(BASE_DIR / "var"))).resolve()
ZERO_SETUP = not env_str("DATABASE_URL")
DEBUG = env_bool("DEBUG", False)
TESTING = env_bool("RINGFENCE_TESTING", False)


def _secret(name: str, min_length: int) -> str:
    """A secret from the environment. Only in zero-setup mode (and for DEBUG or the tests) may it
    come from var/, where `make run` puts it; nothing here writes a file."""
    value = env_str(name)
    if not value:
        if not (ZERO_SETUP or DEBUG or TESTING):
            raise ImproperlyConfigured(f"{name} must be set when DATABASE_URL is set.")
        value = zero_setup.read_secret(VAR_DIR, name)
        if value is None:  # e.g. `manage.py check` on a fresh clone: a key for this process only
            warnings.warn(f"{name} is not set and {VAR_DIR} has none (`make run` creates it): "
                          "this process uses a one-off key.", stacklevel=2)
            value = zero_setup.SECRETS[name][1]()
    if len(value) < min_length:
        raise ImproperlyConfigured(f"{name} must be at least {min_length} characters long.")
    return value


SECRET_KEY = _secret("SECRET_KEY", 50)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Behind TLS in production: secure cookies, HSTS, redirect to https.
HTTPS = env_bool("HTTPS", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "guardian",
    "ninja",
    "axes",
    "core",
    "audit",
    "governance",
    "approvals",
    "rollouts",
    "configuration",
]

MIDDLEWARE = [
    "core.requestlog.RequestLogMiddleware",  # first: its line times and names every answer
    "config.observability.OperabilityMiddleware",  # /metrics, /healthz, /readyz: before host checks
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.NoStoreMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.middleware.UnavailableMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a refused sign-in into the lockout page
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "governance.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": parse_database_url(
        "DATABASE_URL", env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'ringfence.sqlite3'}")
    )
}
_db = DATABASES["default"]
if _db["ENGINE"].endswith("postgresql"):
    _db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
    _db["OPTIONS"] = {
        **_db.get("OPTIONS", {}),
        "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1),
        # A stuck lock or a hung statement becomes an error a caller can see, not a hang.
        "options": "-c lock_timeout={} -c statement_timeout={}".format(
            env_int("DATABASE_LOCK_TIMEOUT_MS", 5000, minimum=0),
            env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30000, minimum=0),
        ),
    }
    # A pool per process (psycopg_pool) instead of a new connection, and its SCRAM handshake, per
    # request: ASGI closes connections at each request's end, so without it every answer pays a
    # connect. 0 (the default) keeps one connection per request or CONN_MAX_AGE's persistent ones.
    if pool_size := env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0):
        _db["CONN_MAX_AGE"] = 0  # Django refuses persistent connections beside a pool
        _db["OPTIONS"]["pool"] = {
            "min_size": min(2, pool_size), "max_size": pool_size,
            "timeout": env_int("DATABASE_POOL_TIMEOUT_SECONDS", 5, minimum=1),
        }
    if test_name := env_str("DATABASE_TEST_NAME"):
        _db["TEST"] = {"NAME": test_name}
else:
    _db["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: a locked-out password sign-in goes no further
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
GUARDIAN_USER_OBJ_PERMS_MODEL = "governance.WorkflowUserObjectPermission"
GUARDIAN_GROUP_OBJ_PERMS_MODEL = "governance.WorkflowGroupObjectPermission"
ANONYMOUS_USER_NAME = None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Sign-in through the company's identity provider (OpenID Connect, governance.oidc); off while OIDC_ISSUER is
# empty. LOCAL_LOGIN=false turns password sign-in off; `manage.py breakglass` remains the way in.
OIDC_ISSUER = env_str("OIDC_ISSUER").strip().rstrip("/")
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID").strip()
OIDC_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups").strip() or "groups"
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "SSO").strip() or "SSO"
OIDC_SCOPES = " ".join(env_str("OIDC_SCOPES", "openid email profile").split())
OIDC_TIMEOUT_SECONDS = env_float("OIDC_TIMEOUT_SECONDS", 5.0, minimum=0.5)
if OIDC_ISSUER:
    if not (OIDC_ISSUER.startswith("https://")
            or OIDC_ISSUER.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))):
        raise ImproperlyConfigured(f"OIDC_ISSUER={OIDC_ISSUER!r} must start with https:// (http:// only on this host).")
    if not (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET):
        raise ImproperlyConfigured("OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set with OIDC_ISSUER.")
    if "openid" not in OIDC_SCOPES.split():
        raise ImproperlyConfigured(f"OIDC_SCOPES={OIDC_SCOPES!r} must include openid.")
LOCAL_LOGIN = env_bool("LOCAL_LOGIN", True)
if not LOCAL_LOGIN and not OIDC_ISSUER:
    raise ImproperlyConfigured("LOCAL_LOGIN=false needs OIDC_ISSUER: otherwise nobody could sign in.")
AUTHENTICATION_BACKENDS += ["governance.oidc.IdentityProviderBackend"]  # inert while OIDC_ISSUER is empty
MIDDLEWARE += ["governance.identity_views.local_login_gate"]  # LOCAL_LOGIN=false refuses password sign-in

# Sign-in throttling (django-axes; README "Sign-in throttling", governance.login_throttling): an account or an
# address with LOGIN_FAILURE_LIMIT failed password sign-ins within LOGIN_COOLOFF_MINUTES of each other is
# refused until that long after them. LOGIN_LOCKOUT_BY: which counters lock (username, ip_address, or the pair
# username+ip_address). LOGIN_CLIENT_IP_HEADER: the header the proxy in front of Ringfence sets to the
# client's address (X-Real-IP, X-Forwarded-For); unset, the peer's address counts and no header is trusted.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_COOLOFF_MINUTES = env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1)
LOGIN_LOCKOUT_BY = env_list("LOGIN_LOCKOUT_BY", ["username", "ip_address"])
LOGIN_CLIENT_IP_HEADER = env_str("LOGIN_CLIENT_IP_HEADER").strip()
if LOGIN_CLIENT_IP_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", LOGIN_CLIENT_IP_HEADER):
    raise ImproperlyConfigured(f"LOGIN_CLIENT_IP_HEADER={LOGIN_CLIENT_IP_HEADER!r} is not a header name.")
AXES_LOCKOUT_PARAMETERS: list[str | list[str]] = []
for _counter in LOGIN_LOCKOUT_BY:
    _parts = _counter.split("+")
    if len(set(_parts)) != len(_parts) or not set(_parts) <= {"username", "ip_address"}:
        raise ImproperlyConfigured(f"LOGIN_LOCKOUT_BY={','.join(LOGIN_LOCKOUT_BY)!r}: use username, ip_address "
                                   "or username+ip_address, comma-separated.")
    AXES_LOCKOUT_PARAMETERS.append(_parts[0] if len(_parts) == 1 else _parts)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES)
# Attempts while locked out are refused unchecked and do not push the end of the lockout further.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False  # the handler forgets the signed-in account's failures only
AXES_HANDLER = "governance.login_throttling.AuditedDatabaseHandler"
AXES_LOCKOUT_CALLABLE = "governance.login_throttling.lockout_response"
AXES_CLIENT_IP_CALLABLE = "governance.login_throttling.client_ip"
AXES_WHITELIST_CALLABLE = "governance.login_throttling.is_not_a_password_login"
AXES_HTTP_RESPONSE_CODE = 429
# Lockouts are lifted by `manage.py unlock_login` (audited), not by deleting rows in the admin; sign-ins
# that succeed are not kept (the audit trail and the security log say what matters).
AXES_ENABLE_ADMIN = False
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

LANGUAGE_CODE = "en"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # plotly.js ships inside the pinned plotly package: served from there, never from a CDN.
    ("vendor/plotly", Path(plotly.__file__).resolve().parent / "package_data"),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the app and static/ folders so that no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    # plotly.js and htmx's indicator styles insert <style> elements.
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.SELF],
}

# Email (Django 6.1 MAILERS). EMAIL_BACKEND picks the backend; SMTP takes the EMAIL_* options.
EMAIL_BACKEND_PATH = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.filebased.EmailBackend" if ZERO_SETUP else "django.core.mail.backends.smtp.EmailBackend",
)
if EMAIL_BACKEND_PATH.endswith("smtp.EmailBackend"):
    _mail_options = {
        "host": env_str("EMAIL_HOST", "localhost"),
        "port": env_int("EMAIL_PORT", 25, minimum=1),
        "username": env_str("EMAIL_HOST_USER"),
        "password": env_str("EMAIL_HOST_PASSWORD"),
        "use_tls": env_bool("EMAIL_USE_TLS", False),
        "timeout": env_int("EMAIL_TIMEOUT", 10, minimum=1),
    }
elif EMAIL_BACKEND_PATH.endswith("filebased.EmailBackend"):
    _mail_options = {"file_path": str(VAR_DIR / "mail")}
else:
    _mail_options = {}
MAILERS = {"default": {"BACKEND": EMAIL_BACKEND_PATH, "OPTIONS": _mail_options}}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "ringfence@localhost")

# Approval notifications: email to the people a request waits for, and a signed webhook.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
if not SITE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"SITE_URL={SITE_URL!r} must start with http:// or https://.")
APPROVALS_EMAIL = env_bool("APPROVALS_EMAIL", True)
APPROVALS_WEBHOOK_URL = env_str("APPROVALS_WEBHOOK_URL").strip()
APPROVALS_WEBHOOK_SECRET = env_str("APPROVALS_WEBHOOK_SECRET")
if APPROVALS_WEBHOOK_URL:
    if not APPROVALS_WEBHOOK_URL.startswith(("http://", "https://")):
        raise ImproperlyConfigured("APPROVALS_WEBHOOK_URL must start with http:// or https://.")
    if len(APPROVALS_WEBHOOK_SECRET) < 32:
        raise ImproperlyConfigured(
            "APPROVALS_WEBHOOK_SECRET must be set (at least 32 characters) with APPROVALS_WEBHOOK_URL.")
APPROVALS_WEBHOOK_TIMEOUT_SECONDS = env_float("APPROVALS_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Webhooks, the webhook executor and agents' callbacks are never sent to loopback, link-local, private,
# shared, multicast or reserved addresses (core.outbound), except inside these networks (CIDRs).
WEBHOOK_ALLOWED_NETWORKS = env_networks("WEBHOOK_ALLOWED_NETWORKS")
# PagerDuty's Events API v2; routes name the environment variable holding each routing key.
PAGERDUTY_EVENTS_URL = env_str("PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com/v2/enqueue").strip()
if not PAGERDUTY_EVENTS_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("PAGERDUTY_EVENTS_URL must start with http:// or https://.")
APPROVALS_REMINDER_SECONDS = env_int("APPROVALS_REMINDER_SECONDS", 120, minimum=0)
# An approved agent action is claimed within this long or expires; an execution's outcome is
# expected within this long of its grant.
APPROVAL_EXECUTION_WINDOW_SECONDS = env_int("APPROVAL_EXECUTION_WINDOW_SECONDS", 900, minimum=1)

# Slack (approvals.slack): requests posted with buttons to the channels routes name; off without a token.
SLACK_BOT_TOKEN = env_str("SLACK_BOT_TOKEN").strip()
SLACK_SIGNING_SECRET = env_str("SLACK_SIGNING_SECRET").strip()
SLACK_API_URL = env_str("SLACK_API_URL", "https://slack.com/api/").strip()
if SLACK_BOT_TOKEN:
    if not SLACK_SIGNING_SECRET:
        raise ImproperlyConfigured("SLACK_SIGNING_SECRET must be set with SLACK_BOT_TOKEN (the app's Signing Secret).")
    if not SLACK_API_URL.startswith(("http://", "https://")):
        raise ImproperlyConfigured("SLACK_API_URL must start with http:// or https://.")

# The cache and every publish (pages, beat, tasks) give Redis this long to connect and answer,
# then treat it as away: a hung Redis costs a page one timeout per message, not minutes
# (RELIABILITY TMR-05). Redis on the same network answers in milliseconds.
REDIS_SOCKET_TIMEOUT_SECONDS = env_float("REDIS_SOCKET_TIMEOUT_SECONDS", 1.0, minimum=0.05)

# Cache: Redis where configured (shared across web processes), else local memory.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "OPTIONS": {"socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                                      "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery (RELIABILITY.md §4.2). The database's due_at is the timer; messages only add precision.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task running when the broker connection drops finishes; its message may be delivered again
# later, which every task tolerates (state-guarded). Cancelling instead (Celery 6's default)
# terminates the pool child by pid, which raced with the child's next job: in 2 of 4 TMR-04 runs
# the first task delivered after the reconnection never started (0 of 5 runs without it).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10.0
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_WORKER_ETA_TASK_LIMIT = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Worker and beat never give up reconnecting after a broker outage, and try at least every
# BROKER_RECONNECT_MAX_SECONDS (kombu's own backoff grows to 30 s), so the timers due in the outage
# fire within a sweep interval of the broker's return (TMR-04). One TCP connect per process per try.
BROKER_RECONNECT_MAX_SECONDS = env_float("BROKER_RECONNECT_MAX_SECONDS", 0.5, minimum=0.1)
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Publishing gives up quickly: one connection attempt, one retry, each bounded by
# REDIS_SOCKET_TIMEOUT_SECONDS (BROKER_PUBLISH_TRANSPORT_OPTIONS below, applied by
# config.celery). Messages only add precision: the committed due_at and the sweep are the
# timer, and the sweep re-sends lost work.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 7200, minimum=1)
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _processed_dir = VAR_DIR / "celery" / "processed"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
    }
    BROKER_PUBLISH_TRANSPORT_OPTIONS = {}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        # Consuming waits a hiccup out: an acknowledgement that fails keeps its prefetch slot until
        # the worker reconnects (kombu 5.7 QoS.ack). With 1 s and no retry, two failed acks in a
        # 16 s hang left a worker consuming nothing after Redis came back (TMR-05); a hang long
        # enough to fail the ack of every slot still would.
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
        "retry_on_timeout": True,
        # Reconnect backoff, for publishing (kombu) and for worker and beat (config.celery).
        "interval_start": min(0.5, BROKER_RECONNECT_MAX_SECONDS),
        "interval_step": 0.5,
        "interval_max": BROKER_RECONNECT_MAX_SECONDS,
    }
    # Connections that publish: a timeout is an answer (the broker is away), not retried.
    BROKER_PUBLISH_TRANSPORT_OPTIONS = {
        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        "retry_on_timeout": False,
    }
# A worker that holds no task while messages wait in its queues, and receives none, for this long
# exits so its supervisor starts a fresh one (core.worker_watchdog); 0 turns the watch off.
# The watch goes on through a warm shutdown, so keep it above the soft shutdown timeout.
WORKER_STALL_SECONDS = env_float("WORKER_STALL_SECONDS", 60.0, minimum=0)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
TIMER_SWEEP_SECONDS = env_float("TIMER_SWEEP_SECONDS", 5.0, minimum=0.1)

# Audit trail: checkpoints are signed with a key the database never holds.
AUDIT_CHECKPOINT_KEY = _secret("AUDIT_CHECKPOINT_KEY", 32)
# The HMAC chain checkpoints of the log's first years (audit.log.write_checkpoint), still written hourly.
AUDIT_CHAIN_CHECKPOINT_SECONDS = env_int("AUDIT_CHAIN_CHECKPOINT_SECONDS", 3600, minimum=1)
AUDIT_CHECKPOINT_FILE = Path(env_str("AUDIT_CHECKPOINT_FILE", str(VAR_DIR / "audit-checkpoints.jsonl")))
# The transparency log (audit.sequencing): entries are sequenced within AUDIT_MERGE_DELAY_SECONDS, by a
# background sequencer (production) or inline in the writing transaction (zero-setup SQLite, the tests).
AUDIT_SEQUENCER = env_str("AUDIT_SEQUENCER", "inline" if ZERO_SETUP or TESTING else "background")
if AUDIT_SEQUENCER not in ("inline", "background"):
    raise ImproperlyConfigured(f"AUDIT_SEQUENCER={AUDIT_SEQUENCER!r}: use inline or background.")
AUDIT_MERGE_DELAY_SECONDS = env_float("AUDIT_MERGE_DELAY_SECONDS", 1.0, minimum=0.01)
AUDIT_SEQUENCE_BATCH = env_int("AUDIT_SEQUENCE_BATCH", 2000, minimum=1)
AUDIT_SEQUENCER_POLL_SECONDS = env_float("AUDIT_SEQUENCER_POLL_SECONDS", 0.05, minimum=0.001)
# Signed checkpoints (C2SP tlog-checkpoint, Ed25519 signed note): when the tree grew, at most this often;
# at least every AUDIT_CHECKPOINT_IDLE_SECONDS when nothing happens.
AUDIT_CHECKPOINT_INTERVAL_SECONDS = env_float("AUDIT_CHECKPOINT_INTERVAL_SECONDS", 5.0, minimum=0.1)
AUDIT_CHECKPOINT_IDLE_SECONDS = env_float("AUDIT_CHECKPOINT_IDLE_SECONDS", 3600.0, minimum=1)
AUDIT_SIGNING_KEY = _secret("AUDIT_SIGNING_KEY", 44)  # base64 of a 32-byte Ed25519 seed, outside the database
AUDIT_LOG_ORIGIN = env_str("AUDIT_LOG_ORIGIN", "ringfence.local/audit")
# The auditors' verify page takes export files up to this size (refused by Content-Length before the
# body is read, and counted while it streams), then checks them in a worker. A file above
# FILE_UPLOAD_MAX_MEMORY_SIZE is spooled to disk, never held in memory. (DATA_UPLOAD_MAX_MEMORY_SIZE,
# Django's 2.5 MB, bounds a form's other fields and any body read whole, never a file.)
AUDIT_VERIFY_MAX_UPLOAD_MB = env_int("AUDIT_VERIFY_MAX_UPLOAD_MB", 50, minimum=1)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default: well under the cap

CELERY_BEAT_SCHEDULE = {
    "audit-checkpoint": {
        "task": "audit.tasks.write_checkpoint_if_due",
        "schedule": min(60.0, float(AUDIT_CHAIN_CHECKPOINT_SECONDS)),
    },
    # The safety net of the sequencer process, and the signed checkpoints' clock.
    "audit-sequence": {"task": "audit.tasks.sequence", "schedule": AUDIT_MERGE_DELAY_SECONDS},
    # Fires overdue approval timers, opens due reminders, republishes lost messages.
    "sweep-due-timers": {"task": "approvals.tasks.sweep_due", "schedule": TIMER_SWEEP_SECONDS},
}
# Signals older than this many days are rolled up into per-minute aggregates and the samples deleted, once a
# day (rollouts.retention); 0 keeps every sample.
SIGNAL_RETENTION_DAYS = env_int("SIGNAL_RETENTION_DAYS", 30, minimum=0)
CELERY_BEAT_SCHEDULE["retain-signals"] = {"task": "rollouts.tasks.retain_signals", "schedule": 24 * 3600.0}

# LOG_FORMAT=json: one JSON object per line (python-json-logger), with the request id of the request
# or task on every line (core.requestlog); `plain` is for a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.requestlog.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "pythonjsonlogger.json.JsonFormatter", "timestamp": True,
                 "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
                 "rename_fields": {"levelname": "level", "name": "logger"}},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "ringfence.security": {"level": "INFO"},
        # django-axes: its warnings (failures, lockouts; names and addresses masked) but not a line per sign-in;
        # ringfence.security has each failure in full.
        "axes": {"level": "WARNING"},
        # One line per request (core.requestlog); set LOG_REQUESTS=false when the proxy's access log is enough.
        "ringfence.request": {"level": "INFO" if env_bool("LOG_REQUESTS", True) else "WARNING"},
    },
}

# Operability (config.observability): /metrics for Prometheus, /healthz and /readyz for supervisors.
METRICS_TOKEN = env_str("METRICS_TOKEN").strip()
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
READY_TIMEOUT_SECONDS = env_float("READY_TIMEOUT_SECONDS", 2.0, minimum=0.1)
# Tracing (config.tracing) follows the standard OTEL_* variables; this links an audit event's trace id to the
# tracing UI on the auditors' desk, e.g. https://jaeger.example/trace/{trace_id}.
OTEL_TRACE_URL_TEMPLATE = env_str("OTEL_TRACE_URL_TEMPLATE").strip()
if OTEL_TRACE_URL_TEMPLATE and (not OTEL_TRACE_URL_TEMPLATE.startswith(("https://", "http://"))
                                or "{trace_id}" not in OTEL_TRACE_URL_TEMPLATE):
    raise ImproperlyConfigured(f"OTEL_TRACE_URL_TEMPLATE={OTEL_TRACE_URL_TEMPLATE!r}: use an http(s) URL with "
                               "{trace_id} where the trace id goes.")

# Agent API (README "Agent and CI API"): per-caller rate limit, idempotency keys, long-poll.
API_RATE_LIMIT_REQUESTS = env_int("API_RATE_LIMIT_REQUESTS", 600, minimum=1)
API_RATE_LIMIT_WINDOW_SECONDS = env_float("API_RATE_LIMIT_WINDOW_SECONDS", 60.0, minimum=0.001)
API_RATE_LIMIT_REDIS_TIMEOUT = env_float("API_RATE_LIMIT_REDIS_TIMEOUT", 0.5, minimum=0.01)
API_TOKEN_MAX_DAYS = env_int("API_TOKEN_MAX_DAYS", 90, minimum=1)
API_TOKEN_ROTATION_OVERLAP_HOURS = env_int("API_TOKEN_ROTATION_OVERLAP_HOURS", 24, minimum=0)
IDEMPOTENCY_KEY_TTL_HOURS = env_int("IDEMPOTENCY_KEY_TTL_HOURS", 24, minimum=1)
IDEMPOTENCY_WAIT_SECONDS = env_float("IDEMPOTENCY_WAIT_SECONDS", 2.0, minimum=0.001)
API_LONG_POLL_MAX_SECONDS = env_float("API_LONG_POLL_MAX_SECONDS", 25.0, minimum=0)
API_LONG_POLL_INTERVAL_SECONDS = env_float("API_LONG_POLL_INTERVAL_SECONDS", 0.5, minimum=0.01)

# Rollouts (README "Rollouts"): evaluation cadence, executors, context tags.
ROLLOUT_EVALUATION_SECONDS = env_float("ROLLOUT_EVALUATION_SECONDS", 15.0, minimum=0.5)
ROLLOUT_EVALUATION_DEBOUNCE_SECONDS = env_float("ROLLOUT_EVALUATION_DEBOUNCE_SECONDS", 1.0, minimum=0.05)
ROLLOUT_SWEEP_SECONDS = env_float("ROLLOUT_SWEEP_SECONDS", 5.0, minimum=0.1)
ROLLOUT_WEBHOOK_TIMEOUT_SECONDS = env_float("ROLLOUT_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
ROLLOUT_EXECUTOR_MAX_ATTEMPTS = env_int("ROLLOUT_EXECUTOR_MAX_ATTEMPTS", 6, minimum=1)
ROLLOUT_EXECUTOR_BACKOFF_SECONDS = env_float("ROLLOUT_EXECUTOR_BACKOFF_SECONDS", 1.0, minimum=0)
ROLLOUT_EXECUTOR_BACKOFF_MAX_SECONDS = env_float("ROLLOUT_EXECUTOR_BACKOFF_MAX_SECONDS", 60.0, minimum=0)
# An attempt without a result after this long is taken over (its worker died); keep it above the timeout.
ROLLOUT_EXECUTOR_LEASE_SECONDS = env_float("ROLLOUT_EXECUTOR_LEASE_SECONDS", ROLLOUT_WEBHOOK_TIMEOUT_SECONDS + 10,
                                           minimum=ROLLOUT_WEBHOOK_TIMEOUT_SECONDS)
ROLLOUT_EXECUTOR_STALL_SECONDS = env_float("ROLLOUT_EXECUTOR_STALL_SECONDS", 15.0, minimum=0.1)
ROLLOUT_REPROPOSE_COOLDOWN_SECONDS = env_int("ROLLOUT_REPROPOSE_COOLDOWN_SECONDS", 900, minimum=0)
# A rollout proposal's deadline message is due this long before its override window or gate runs
# out; the worker waits out the rest, so a busy queue in front of it does not delay the action.
ROLLOUT_DEADLINE_LEAD_SECONDS = env_float("ROLLOUT_DEADLINE_LEAD_SECONDS", 1.0, minimum=0)
if ROLLOUT_DEADLINE_LEAD_SECONDS > 30:
    raise ImproperlyConfigured(f"ROLLOUT_DEADLINE_LEAD_SECONDS={ROLLOUT_DEADLINE_LEAD_SECONDS} is above the maximum "
                               "of 30: a worker process waits it out.")
ROLLOUT_TAG_MAX_HOURS = env_int("ROLLOUT_TAG_MAX_HOURS", 72, minimum=1)
ROLLOUT_SIGNALS_MAX_BATCH = env_int("ROLLOUT_SIGNALS_MAX_BATCH", 10_000, minimum=1)
ROLLOUT_WEBHOOK_SECRET = _secret("ROLLOUT_WEBHOOK_SECRET", 32)
CELERY_BEAT_SCHEDULE["rollouts-evaluate-live-plans"] = {
    "task": "rollouts.tasks.evaluate_live_plans", "schedule": ROLLOUT_EVALUATION_SECONDS}
CELERY_BEAT_SCHEDULE["rollouts-sweep-actions"] = {
    "task": "rollouts.tasks.sweep_actions", "schedule": ROLLOUT_SWEEP_SECONDS}
# Ringfence's own human-review signals (README "Rollouts"): one sample per metric and live plan
# reading it every ROLLOUT_REVIEW_SIGNALS_SECONDS; fewer decisions than the minimum in a window is no sample.
ROLLOUT_REVIEW_SIGNALS_SECONDS = env_float("ROLLOUT_REVIEW_SIGNALS_SECONDS", 60.0, minimum=1.0)
ROLLOUT_REVIEW_MIN_DECISIONS = env_int("ROLLOUT_REVIEW_MIN_DECISIONS", 5, minimum=1)
CELERY_BEAT_SCHEDULE["rollouts-review-signals"] = {
    "task": "rollouts.tasks.sample_review_signals", "schedule": ROLLOUT_REVIEW_SIGNALS_SECONDS}
# Metric providers (README "Metric providers"): how often beat looks for metrics due to be pulled (each
# metric's own `interval` says when it is due), the answer size read at most, and the fetches kept per
# plan and metric for the plan page.
METRIC_PULL_SWEEP_SECONDS = env_float("METRIC_PULL_SWEEP_SECONDS", 5.0, minimum=0.1)
METRIC_FETCH_MAX_BYTES = env_int("METRIC_FETCH_MAX_BYTES", 1_048_576, minimum=1024)
METRIC_FETCH_KEEP = env_int("METRIC_FETCH_KEEP", 200, minimum=1)
# A sweep still queued when the next is due is dropped (`expires`): busy workers never pile sweeps up.
CELERY_BEAT_SCHEDULE["rollouts-pull-metrics"] = {
    "task": "rollouts.tasks.pull_metrics", "schedule": METRIC_PULL_SWEEP_SECONDS,
    "options": {"expires": METRIC_PULL_SWEEP_SECONDS}}
# The zero-setup demo keeps its live rollouts' signals flowing (never on unless asked, outside zero-setup).
ROLLOUT_DEMO_SIGNALS = env_bool("ROLLOUT_DEMO_SIGNALS", ZERO_SETUP)
if ROLLOUT_DEMO_SIGNALS:
    CELERY_IMPORTS = ["rollouts.demo_tasks"]
    CELERY_BEAT_SCHEDULE["rollouts-demo-signals"] = {"task": "rollouts.demo_tasks.feed_demo_signals",
                                                     "schedule": 30.0}
ROLLOUT_PAGE_REFRESH_SECONDS = env_int("ROLLOUT_PAGE_REFRESH_SECONDS", 5, minimum=1)
