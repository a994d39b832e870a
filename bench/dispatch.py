"""Dispatch throughput and latency beside the least any audited answer must do, measured in the same run.

    .venv/bin/python bench/dispatch.py [--seconds 8] [--concurrency 8] [--workers 2] [--pairs 3]
                                       [--iterations 1000] [--server asgi|wsgi] [--quick]

Starts gunicorn the way production serves Ringfence (uvicorn workers, ASGI; `--server wsgi` for the
sync workers) on a scratch database (ringfence_bench_api, created, migrated and dropped here), with
AUDIT_SEQUENCER=background and a `manage.py audit_sequencer` process placing the audit entries, as in
production; then drives it from a separate load process:

1. the reference: a bare Django view doing one durable INSERT (a row of audit_entry's shape into a
   scratch table, in its own transaction, committed), through the same server and middleware: the
   least any audited answer must do;
2. a bare Django view doing one indexed read (no write at all): what the server and middleware cost;
3. the floor (`/bench/floor`): the least a dispatch answering `allow` must do, in raw SQL with no ORM,
   ninja or pydantic: one read (token, account, scope, action), the Redis rate-limit script, one
   durable write in one round trip (workflow share lock, idempotency record, execution, audit entry,
   commit);
4. POST /api/v1/dispatch answering `allow` (token check, rate limit, idempotency key, execution, audit);
5. POST /api/v1/dispatch answering `pending` (plus an approval request, its timer and notice);
6. the database alone: the floor's read and write driven by pgbench (when it is installed) from
   as many connections as the server has workers, with no web server at all;
7. both dispatch paths again at half of their measured rate, for latency under normal load;
8. what the action's rules cost. The allowed action (`send_receipt`) carries a policy of 20 rules
   whose deciding rule is the last, so every allow evaluates all 20; `send_invoice`, of the same
   risk, has none. Both are dispatched with the same body: in alternating closed-loop phases of
   the same length (their rates), then in turn on one connection per worker (their latencies, met
   under the same load at the same moments); the difference per dispatch is printed as a share of
   the ruled dispatch. Then, in a process of its own against the same database, what dispatch does
   for rules (build the call and its `rules.Evaluator`, read the action's rules (a JSON column of the
   workflow's locked read: timed as that read less the same read for the action without rules), evaluate the 20
   conditions, read the deciding rule's values) is timed beside the whole `dispatch()` service call
   of the same allow, and printed as a share of it and of the served dispatch (target: ≤ 5 %).

Prints requests/s, p50 and p99, the CPU the server side (gunicorn, PostgreSQL, Redis) spent per
answer, and the ratios (goals: allow ≥ 60 % and pending ≥ 40 % of the reference, p99 < 25 ms at half
load), then the audit entries' sequencing lag during the run. Configuration: RINGFENCE_BENCH_DATABASE_URL
(default postgres://ringfence:ringfence@127.0.0.1:5432/ringfence_bench_api, dropped and recreated, and
dropped at the end), RINGFENCE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11: the rate limit and
the broker; emptied at the start and at the end, so no timer message is left behind; database 0, the
test suite's, is refused).

The module also serves as the benchmark's URL configuration (`bench.dispatch.urlpatterns`) and
application (`bench.dispatch:asgi()`, `bench.dispatch:wsgi()`), so the reference views and the
floor run in the very same server as the real endpoint.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://ringfence:ringfence@127.0.0.1:5432/ringfence_bench_api"
RULED, UNRULED = "send_receipt", "send_invoice"  # the same risk; only the first has rules
RULES = 20
PARAMETERS = {"order": "A-1", "amount": 20.0}


def policy(size: int = RULES) -> list[dict]:
    """The rules of the allowed action: `size - 1` that do not hold for the benchmark's call, then
    the one that allows it, so an allow evaluates every rule. Each of the first reads two variables
    and both halves are evaluated (the name differs; the amount is below the band)."""
    rules: list[dict] = []
    for i in range(1, size):
        condition = f"agent.name != 'x{i}' && params.amount > 100000.0 + {i}.0"
        if i % 2:
            rules.append({"condition": condition, "outcome": "approve", "quorum": 2, "reason": f"Band {i} refunds."})
        else:
            rules.append({"condition": condition, "outcome": "deny", "reason": f"Above the band {i} ceiling."})
    rules.append({"condition": "double(params.amount) <= 50.0", "outcome": "allow",
                  "reason": "Small amounts run unattended."})
    return rules


# -- the server side ---------------------------------------------------------------------------

DURABLE_TABLE = "bench_durable"
DURABLE_INSERT = (f"INSERT INTO {DURABLE_TABLE} (xid, occurred_at, action, canonical, mac) "
                  "VALUES (pg_current_xact_id()::text::bigint, %s, 'bench.durable', %s, %s) RETURNING id")


@csrf_exempt
def durable(request: HttpRequest) -> HttpResponse:
    """The reference: one durable INSERT (a row of audit_entry's shape holding the request's body, in
    its own transaction, committed before the answer), the least any audited answer must do."""
    from django.db import connection, transaction

    from core import clock

    body = request.body.decode()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(DURABLE_INSERT, [clock.now(), body, hashlib.sha256(request.body).hexdigest()])
        row_id = cursor.fetchone()[0]
    return HttpResponse(json.dumps({"id": row_id}), content_type="application/json")


def bare(request: HttpRequest) -> HttpResponse:
    """One indexed PostgreSQL query, a small JSON answer: what the server and middleware cost."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM governance_workflow WHERE slug = %s", ["refund-agent"])
        row = cursor.fetchone()
    return HttpResponse(json.dumps({"workflow": row[0] if row else None}), content_type="application/json")


# -- the floor: the least a dispatch answering `allow` must do ----------------------------------
# Check the token and the account, find the workflow in the account's scope and the action's risk
# (one read); count the request in Redis; then one durable write: share-lock the workflow (a pause
# waits for it), store the answer under the idempotency key, grant the execution, accept the audit
# entry (no lock, no read of the log: the sequencer places it), commit. Raw SQL in one round trip
# per step: no ORM, no ninja, no pydantic.

FLOOR_READ = """
SELECT t.id, sa.id, sa.name, w.id, w.slug, w.paused, a.risk
FROM governance_apitoken t
JOIN governance_serviceaccount sa ON sa.id = t.service_account_id AND sa.active
JOIN governance_serviceaccount_workflows s ON s.serviceaccount_id = sa.id
JOIN governance_workflow w ON w.id = s.workflow_id AND w.slug = %(workflow)s
LEFT JOIN governance_governedaction a ON a.workflow_id = w.id AND a.name = %(action)s
WHERE t.digest = %(digest)s AND t.revoked_at IS NULL
"""

FLOOR_WRITE = """
BEGIN;
SELECT 1 FROM governance_workflow WHERE id = %(workflow_id)s FOR SHARE;
INSERT INTO governance_idempotencykey (service_account_id, key, fingerprint, method, path, state, response_status,
                                       response_content_type, response_body, created_at, expires_at)
VALUES (%(account_id)s, %(key)s, %(fingerprint)s, 'POST', '/api/v1/dispatch', 'completed', 200,
        'application/json', %(answer)s, %(occurred_at)s, %(occurred_at)s + interval '24 hours');
INSERT INTO approvals_execution (workflow_id, action, parameters_digest, service_account_id, state, granted_at,
                                 expires_at, detail)
VALUES (%(workflow_id)s, %(action)s, %(digest)s, %(account_id)s, 'granted', %(occurred_at)s,
        %(occurred_at)s + interval '15 minutes', '');
INSERT INTO audit_entry (xid, occurred_at, action, canonical, mac)
VALUES (pg_current_xact_id()::text::bigint, %(occurred_at)s, 'dispatch.allowed', %(canonical)s, %(mac)s);
COMMIT
"""


def floor_write_sql() -> str:
    """The floor's write transaction, sent in one round trip."""
    return FLOOR_WRITE


def floor_params(body: dict, key: str, fingerprint: str, row: tuple) -> dict:
    """Everything the write needs: the answer, the idempotency record, the execution and the audit entry."""
    from audit import log as audit
    from audit import sequencing
    from core import clock

    _token, account_id, account_name, workflow_id, slug, _paused, risk = row
    answer = json.dumps({"decision": "allow", "code": "within_autonomy", "workflow": slug, "action": body["action"],
                         "reason": f"{risk} risk runs without approval."})
    now = clock.now()
    parameters = body.get("parameters", {})
    canonical = audit.unsequenced_canonical({
        "occurred_at": now, "actor_kind": "service", "actor_id": str(account_id), "actor_label": account_name,
        "action": "dispatch.allowed", "subject_type": "governance.workflow", "subject_id": str(workflow_id),
        "workflow_slug": slug, "reason": "",
        "data": {"action": body["action"], "parameters": parameters, "idempotency_key": key},
    })
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"occurred_at": now, "canonical": canonical, "mac": sequencing.entry_mac(canonical),
            "workflow_id": workflow_id, "account_id": account_id, "key": key, "fingerprint": fingerprint,
            "answer": answer, "action": body["action"], "digest": digest}


@csrf_exempt
def floor(request: HttpRequest) -> HttpResponse:
    """The floor as a view, in the same server as the reference views and the real dispatch."""
    from django.db import connection

    from core import idempotency, ratelimit
    from governance.models import ApiToken

    body = json.loads(request.body)
    key = request.headers["Idempotency-Key"]
    digest = ApiToken.digest_of(request.headers["Authorization"].removeprefix("Bearer ").strip())
    with connection.cursor() as cursor:
        cursor.execute(FLOOR_READ, {"workflow": body["workflow"], "action": body["action"], "digest": digest})
        row = cursor.fetchone()
        ratelimit.enforce(f"token:{row[0]}")
        params = floor_params(body, key, idempotency.fingerprint(request), row)
        cursor.execute(floor_write_sql(), params)
    return HttpResponse(params["answer"], content_type="application/json")


def __getattr__(name: str) -> list:
    """`urlpatterns`, built when the server asks (the load process never imports Django's apps)."""
    if name == "urlpatterns":
        return [path("bench/durable", durable), path("bench/bare", bare), path("bench/floor", floor),
                path("", include("config.urls"))]
    raise AttributeError(name)


def _bench_urls() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings

    settings.ROOT_URLCONF = "bench.dispatch"


def wsgi():
    """gunicorn's application factory for sync workers: Ringfence's settings with this module's URLs."""
    from django.core.wsgi import get_wsgi_application

    _bench_urls()
    application = get_wsgi_application()
    _bench_urls()
    return application


def asgi():
    """The same for uvicorn workers (ASGI), as production serves Ringfence (config.asgi)."""
    from django.core.asgi import get_asgi_application

    _bench_urls()
    application = get_asgi_application()
    _bench_urls()
    return application


# -- the load side (runs in its own process) ---------------------------------------------------

def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def load(spec: dict) -> dict:
    """Closed loop (`rate` 0: each thread sends as fast as answers come) or open loop at `rate`/s.
    With `bodies` instead of `body`, each thread sends them in turn and the answer also gives the
    latencies of each (by action): both kinds are served at the same moments, under the same load."""
    host, port = spec["host"], spec["port"]
    deadline = time.monotonic() + spec["seconds"]
    bodies = spec.get("bodies") or [spec["body"]]
    latencies: list[float] = []
    by_body: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    decisions: dict[str, int] = {}
    lock = threading.Lock()
    interval = spec["concurrency"] / spec["rate"] if spec["rate"] else 0.0

    def worker(index: int) -> None:
        next_at = time.monotonic() + index * (interval / spec["concurrency"] if interval else 0)
        sent = index
        while True:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            if time.monotonic() >= deadline:
                return
            headers = dict(spec["headers"])
            body, sending = None, bodies[sent % len(bodies)]
            sent += 1
            if sending is not None:
                body = json.dumps(sending).encode()
                headers["Idempotency-Key"] = uuid.uuid4().hex
            started = time.perf_counter()
            conn = http.client.HTTPConnection(host, port, timeout=30)
            try:
                conn.request(spec["method"], spec["path"], body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                status = str(response.status)
            except OSError as error:
                status, payload = type(error).__name__, b""
            finally:
                conn.close()
            elapsed = time.perf_counter() - started
            decision = ""
            if payload.startswith(b"{"):
                decision = json.loads(payload).get("decision", "")
            with lock:
                latencies.append(elapsed)
                if len(bodies) > 1 and status == "200":
                    by_body.setdefault(sending["action"], []).append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                if decision:
                    decisions[decision] = decisions.get(decision, 0) + 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(spec["concurrency"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.monotonic() - started
    ok = statuses.get("200", 0)
    return {"requests": len(latencies), "rps": ok / duration, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "statuses": statuses, "decisions": decisions,
            "by_body": {name: {"p50_ms": percentile(values, 50) * 1000, "mean_ms": sum(values) / len(values) * 1000,
                               "n": len(values)} for name, values in by_body.items()}}


def run_load(spec: dict) -> dict:
    """Drive the server from a separate process, so the load's CPU is not the server's."""
    result = subprocess.run([sys.executable, __file__, "--load"], input=json.dumps(spec), capture_output=True,
                            text=True, cwd=ROOT, timeout=spec["seconds"] + 120, check=True)
    return json.loads(result.stdout)


# -- orchestration -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The server's environment: this process's, less its database, broker and Redis settings, plus
    the bench's. Secrets already in this environment (a scratch database's) are kept, so every
    process of a run shares them; the others are made up for the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGFENCE_", "DATABASE_", "CELERY_", "REDIS_"))}
    made_up = {"SECRET_KEY": secrets.token_urlsafe(50), "AUDIT_CHECKPOINT_KEY": secrets.token_hex(32),
               "ROLLOUT_WEBHOOK_SECRET": secrets.token_hex(32),
               "AUDIT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    env.update({name: os.environ.get(name) or value for name, value in made_up.items()})
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings", PYTHONPATH=str(ROOT), DATABASE_URL=database_url,
        REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, RINGFENCE_VAR_DIR=str(ROOT / "var" / "bench"),
        ALLOWED_HOSTS="127.0.0.1", API_RATE_LIMIT_REQUESTS="1000000000", LOG_LEVEL="WARNING",
        DATABASE_CONN_MAX_AGE="60",
    )
    return env


SEED = """
import django; django.setup()
from django.contrib.auth.models import Group, User
from governance import services
from governance.permissions import Role
admin = User.objects.create_user("bench-admin", is_staff=True)
admin.groups.add(Group.objects.get(name=Role.ADMINISTRATOR))
workflow = services.create_workflow(actor=admin, slug="refund-agent", name="Refund agent", autonomy_tier=2,
                                    business_days=[0, 1, 2, 3, 4, 5, 6], timezone="UTC")
from approvals.services import set_action_rules
from bench.dispatch import RULED, UNRULED, policy
ruled = services.define_action(workflow.pk, actor=admin, name=RULED, risk="low")
set_action_rules(ruled.pk, actor=admin, rules=policy())
services.define_action(workflow.pk, actor=admin, name=UNRULED, risk="low")
services.define_action(workflow.pk, actor=admin, name="refund_customer", risk="high")
owner = User.objects.create_user("bench-owner")
account = services.create_service_account(actor=admin, name="bench-bot", owner=owner, workflows=[workflow])
print(services.issue_token(account.pk, actor=admin).raw)
"""


SERVERS = {
    # production (deploy/systemd/ringfence-web.service): uvicorn workers under gunicorn, ASGI
    "asgi": ["bench.dispatch:asgi()", "--worker-class", "uvicorn_worker.UvicornWorker"],
    "wsgi": ["bench.dispatch:wsgi()"],  # gunicorn's sync workers
}


def start_server(env: dict[str, str], workers: int, log: Path | None = None,
                 server: str = "wsgi") -> tuple[subprocess.Popen, int]:
    """gunicorn on a free port, answering /bench/bare; its output goes to `log` when given."""
    port = free_port()
    out = open(log, "ab") if log is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *SERVERS[server], "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--log-level", "warning"],
            cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT if out else None,
        )
    finally:
        if out is not None:
            out.close()  # the server has its own copy
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/bench/bare")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited during start-up")
    raise SystemExit("gunicorn did not answer within 60 s")


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the web server, PostgreSQL and Redis (all their processes; Linux /proc)."""
    totals = {"web": 0.0, "postgres": 0.0, "redis": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = ("web" if b"gunicorn" in command else "postgres" if b"postgres" in command
                else "redis" if b"redis-server" in command else None)
        if name:
            totals[name] += (int(fields[11]) + int(fields[12])) / tick
    return totals


def measured(spec: dict) -> dict:
    """run_load, plus the CPU the server side spent per answered request."""
    before = cpu_seconds()
    result = run_load(spec)
    after = cpu_seconds()
    answered = max(1, result["requests"])
    result["cpu_ms"] = {name: (after[name] - before[name]) / answered * 1000 for name in after}
    return result


def report(name: str, result: dict, reference_rps: float | None = None, bare_rps: float | None = None) -> None:
    ratio = f"  {result['rps'] / reference_rps:6.1%} of reference" if reference_rps else ""
    ratio += f"  {result['rps'] / bare_rps:6.1%} of bare read" if bare_rps else ""
    cpu = ("  CPU/req " + " ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms"].items()) + " ms"
           if "cpu_ms" in result else "")
    print(f"{name:34} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms"
          f"{ratio}{cpu}  {result['statuses']} {result['decisions'] or ''}")


def pgbench() -> str | None:
    found = shutil.which("pgbench")
    return found or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None)


def database_alone(database_url: str, env: dict[str, str], token: str, body: dict, clients: int,
                   seconds: float) -> float | None:
    """The floor's read and write driven straight at PostgreSQL by pgbench (C, no web server, no
    Python) from `clients` connections: what the database alone allows. None without pgbench."""
    program = pgbench()
    if program is None:
        return None
    script = subprocess.run(
        [sys.executable, __file__, "--pgbench-script"], input=json.dumps({"token": token, "body": body}),
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    parts = urlsplit(database_url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as fh:
        fh.write(script)
        fh.flush()
        run = subprocess.run(
            [program, "-n", "-c", str(clients), "-j", str(clients), "-T", str(max(1, round(seconds))), "-f", fh.name,
             "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
             parts.path.lstrip("/")],
            env={**os.environ, "PGPASSWORD": parts.password or ""}, capture_output=True, text=True, check=True)
    tps = [line for line in run.stdout.splitlines() if line.startswith("tps = ")]
    return float(tps[0].split()[2]) if tps else None


def pgbench_script(spec: dict) -> str:
    """The floor's two statements with its parameters written in (runs in the server's environment)."""
    import django

    django.setup()
    import psycopg
    from django.db import connection

    body = spec["body"]
    from governance.models import ApiToken

    digest = ApiToken.digest_of(spec["token"])
    connection.ensure_connection()
    cursor = psycopg.ClientCursor(connection.connection)
    read = cursor.mogrify(FLOOR_READ, {"workflow": body["workflow"], "action": body["action"], "digest": digest})
    row = cursor.execute(read).fetchone()
    write = cursor.mogrify(floor_write_sql(), floor_params(body, "KEY", digest, row))
    # Every transaction a key of its own, as every dispatch has.
    write = write.replace("'KEY'", "gen_random_uuid()::text", 1)
    return "\n".join(" ".join(statement.split()) + ";" for statement in f"{read};{write}".split(";\n")
                     if statement.strip())


def rules_cost(spec: dict) -> dict:
    """In this process (the server's environment): each step dispatch takes for the action's rules,
    timed beside the whole `dispatch()` call of the same allow, interleaved; medians in µs."""
    import django

    django.setup()
    from approvals import dispatch as dispatching
    from approvals import rules
    from core import clock
    from governance import services

    account = services.authenticate_token(spec["token"]).service_account
    body = spec["body"]
    workflow, governed = dispatching._lock_shared(account, body["workflow"], body["action"])
    now = clock.now()
    business = workflow.in_business_hours(now)
    situation = dispatching.situation_of(workflow, now)
    tier = workflow.tier_at(now)
    hours = "business hours" if business else "off hours"
    parameters, evidence = body["parameters"], body.get("evidence", {})
    steps = ("call", "evaluator", "load", "decide", "conditions", "values", "dispatch")
    times: dict[str, list[float]] = {step: [] for step in steps}
    tick = time.perf_counter

    def as_served() -> None:
        """A served request authenticates its token, which reads the account and its owner in one join."""

    for i in range(spec["warmup"] + spec["iterations"]):
        as_served()
        t0 = tick()
        call = dispatching._call(account, workflow, parameters, evidence, None, tier, now, business, situation.tags)
        t1 = tick()
        evaluator = rules.Evaluator(call)
        # The rules come with the workflow's locked read: their cost is that read for the ruled
        # action less the same read for the action without rules.
        t2 = tick()
        _, governed = dispatching._lock_shared(account, body["workflow"], body["action"])
        t_ruled = tick()
        dispatching._lock_shared(account, body["workflow"], UNRULED)
        t_bare = tick()
        live, _shadow = dispatching._split(governed.rules)
        t3 = tick()
        load = max(0.0, (t_ruled - t2) - (t_bare - t_ruled)) + (t3 - t_bare)
        verdict = dispatching.decide(live, evaluator, governed, tier, hours)
        t4 = tick()
        for rule in live:
            evaluator.holds(rule.condition)
        t5 = tick()
        evaluator.values_read(live[-1].condition)
        t6 = tick()
        as_served()
        answer = dispatching.dispatch(account=account, workflow=body["workflow"], action=body["action"],
                                      parameters=parameters, evidence=evidence, idempotency_key=uuid.uuid4().hex)
        t7 = tick()
        assert verdict.code == answer.code == "allowed_by_rule" and verdict.rule.number == len(live) == RULES
        if i >= spec["warmup"]:
            for step, took in zip(steps, (t1 - t0, t2 - t1, load, t4 - t3, t5 - t4, t6 - t5, t7 - t6), strict=True):
                times[step].append(took * 1e6)
    return {step: percentile(values, 50) for step, values in times.items()}


def report_rules(args: argparse.Namespace, ruled: list[dict], unruled: list[dict], mixed: dict, cost: dict) -> None:
    """The share of a dispatch its rules take, measured both ways, each with its reference."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def cpu(result: dict) -> float:
        return sum(result["cpu_ms"].values())

    r, n = mean([x["rps"] for x in ruled]), mean([x["rps"] for x in unruled])
    print(f"\nrules: {RULES} on {RULED} (the deciding rule is the last: every allow evaluates all {RULES}), none on "
          f"{UNRULED}; same body, alternating {args.seconds:g} s phases")
    for name, runs in ((f"dispatch → allow, {RULES} rules", ruled), ("dispatch → allow, no rules", unruled)):
        rates = ", ".join(f"{x['rps']:.1f}" for x in runs)
        print(f"{name:34} {mean([x['rps'] for x in runs]):8.1f} req/s  (runs {rates})  server CPU/req "
              f"{mean([cpu(x) for x in runs]):.2f} ms")
    worker_us = args.workers / r * 1e6
    pairs = ", ".join(f"{1 - a['rps'] / b['rps']:+.1%}" for a, b in zip(ruled, unruled, strict=True))
    ruled_cpu, unruled_cpu = mean([cpu(x) for x in ruled]), mean([cpu(x) for x in unruled])
    print(f"{'':34} the {RULES} rules cost {worker_us - args.workers / n * 1e6:+.0f} µs of worker time per dispatch, "
          f"{1 - r / n:+.1%} of a dispatch with them (pairs {pairs}); server CPU {ruled_cpu:.2f} vs "
          f"{unruled_cpu:.2f} ms, {(ruled_cpu - unruled_cpu) / ruled_cpu:+.1%}. Reference: the same allow on an action "
          "without rules, same run (it builds the Evaluator too and its locked read finds no rules)")
    with_rules, without = mixed["by_body"][RULED], mixed["by_body"][UNRULED]
    served_us = with_rules["p50_ms"] * 1000
    label = f"interleaved, {args.workers} connections"
    print(f"{label:34} {RULES} rules: median {with_rules['p50_ms']:.2f} ms "
          f"(mean {with_rules['mean_ms']:.2f}, {with_rules['n']}); no rules: median {without['p50_ms']:.2f} ms (mean "
          f"{without['mean_ms']:.2f}, {without['n']})  {mixed['statuses']}")
    print(f"{'':34} the {RULES} rules cost {served_us - without['p50_ms'] * 1000:+.0f} µs per dispatch, "
          f"{1 - without['p50_ms'] / with_rules['p50_ms']:+.1%} of a dispatch with them (means "
          f"{1 - without['mean_ms'] / with_rules['mean_ms']:+.1%}). Reference: the same allow without rules, sent in "
          "turn with it on each connection (one per worker: nothing waits for a worker)")
    spent = cost["call"] + cost["evaluator"] + cost["load"] + cost["decide"]
    print(f"in-process, medians of {args.iterations} (µs): what dispatch does for rules {spent:.0f} = the call "
          f"{cost['call']:.0f} + Evaluator {cost['evaluator']:.0f} + the rules' share of the locked read "
          f"{cost['load']:.0f} + decide {cost['decide']:.0f} ({RULES} conditions {cost['conditions']:.0f}, values "
          f"read {cost['values']:.0f}); the whole dispatch() call {cost['dispatch']:.0f}")
    references = (
        (("the whole dispatch() service call of the same allow, same process, interleaved (no HTTP, auth, "
          "idempotency)"), cost["dispatch"]),
        (f"the served allow: its median latency interleaved above ({served_us / 1000:.2f} ms)", served_us),
    )
    for reference, per in references:
        share = spent / per
        verdict = "meets" if share <= 0.05 else "misses"
        print(f"share of rules: {share:6.1%} of {reference}: {verdict} the ≤ 5 % target")
    evaluated = cost["evaluator"] + cost["decide"]
    print(f"{'':16}{evaluated / cost['dispatch']:6.1%} without the two queries (Evaluator + decide: "
          f"{evaluated:.0f} µs), of the same dispatch() call")


def last_entry_id() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM audit_entry")
        return cursor.fetchone()[0]


def sequencing_lag(after_id: int, skip: tuple[int, int] = (0, 0)) -> str:
    """The audit entries of the run (above `after_id`): wait until the sequencer has placed them all,
    then their lag (the event's sequenced_at less the entry's occurred_at), p50 and p99. The entries
    in `skip` (ids above the first and up to the second: pgbench's, all written with the time its
    script was made) are placed too, but their lag says nothing."""
    from django.db import connection

    deadline = time.monotonic() + 120
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM audit_entry AS e WHERE e.id > %s AND NOT EXISTS "
                           "(SELECT 1 FROM governance_auditevent AS ev WHERE ev.entry_id = e.id)", [after_id])
            waiting = cursor.fetchone()[0]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cursor.execute("SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY lag), "
                       "percentile_disc(0.99) WITHIN GROUP (ORDER BY lag), max(lag) FROM "
                       "(SELECT extract(epoch FROM sequenced_at - occurred_at)::float8 AS lag "
                       "FROM governance_auditevent WHERE entry_id > %s AND NOT (entry_id > %s AND entry_id <= %s)) "
                       "AS lags", [after_id, *skip])
        placed, p50, p99, worst = cursor.fetchone()
    if not placed:
        return f"sequencing: nothing placed ({waiting} entries waiting)"
    verdict = "meets" if p99 <= 1.0 and not waiting else "misses"
    return (f"sequencing lag of the run's {placed:,} audit entries (background sequencer): p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms, {waiting} still waiting: {verdict} the ≤ 1 s goal")


def run_phases(args: argparse.Namespace, env: dict[str, str], token: str, port: int,
               database_url: str) -> tuple[int, int]:
    """Every phase, printed as it ends; returns the audit entries pgbench wrote (ids above, up to)."""
    base = {"host": "127.0.0.1", "port": port, "seconds": args.seconds, "concurrency": args.concurrency, "rate": 0}
    api = {**base, "method": "POST", "path": "/api/v1/dispatch",
           "headers": {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}}
    allow = {**api, "body": {"workflow": "refund-agent", "action": RULED, "parameters": PARAMETERS}}
    unruled = {**api, "body": {**allow["body"], "action": UNRULED}}
    pending = {**api, "body": {"workflow": "refund-agent", "action": "refund_customer",
                               "parameters": PARAMETERS, "evidence": {"summary": "bench"}}}
    reference_spec = {**allow, "path": "/bench/durable"}  # the same request, headers and body as an allow
    bare_spec = {**base, "method": "GET", "path": "/bench/bare", "headers": {}, "body": None}
    floor_spec = {**allow, "path": "/bench/floor"}
    run_load({**bare_spec, "seconds": 2})  # warm up

    print(f"gunicorn {args.workers} workers ({args.server.upper()}), load from a separate process with "
          f"{args.concurrency} connections, {args.seconds:g} s per phase, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; AUDIT_SEQUENCER=background with a sequencer process; "
          + (f"a pool of {args.pool} PostgreSQL connections per worker" if args.server == "asgi" and args.pool
             else "DATABASE_CONN_MAX_AGE " + ("0" if args.server == "asgi" else "60")))
    reference = measured(reference_spec)
    report("reference: one durable INSERT", reference)
    ref_rps = reference["rps"]
    bare_result = measured(bare_spec)
    report("bare view, one read", bare_result, ref_rps)
    bare_rps = bare_result["rps"]
    floor_result = measured(floor_spec)
    report("floor: least an allow must do", floor_result, ref_rps, bare_rps)
    allow_result = measured(allow)
    report(f"dispatch → allow ({RULES} rules)", allow_result, ref_rps, bare_rps)
    pending_result = measured(pending)
    report("dispatch → pending", pending_result, ref_rps, bare_rps)
    pgbench_entries = last_entry_id()
    alone = database_alone(database_url, env, token, allow["body"], args.workers, args.seconds)
    pgbench_entries = (pgbench_entries, last_entry_id())
    if alone is None:
        print("database alone: pgbench not found, skipped")
    else:
        print(f"{'database alone: the floor via pgbench':34} {alone:8.1f} tx/s  ({args.workers} connections, no web "
              f"server)  {alone / ref_rps:6.1%} of reference  {alone / bare_rps:6.1%} of bare read")
    for name, spec, result in (("allow", allow, allow_result), ("pending", pending, pending_result)):
        half = max(1.0, result["rps"] / 2)
        paced = run_load({**spec, "rate": half})
        report(f"dispatch → {name} at {half:.0f} req/s (half)", paced)
        verdict = "meets" if paced["p99_ms"] < 25 else "misses"
        print(f"{'':34} p99 at half load {paced['p99_ms']:.1f} ms: {verdict} the < 25 ms goal")
    print("ratios to the reference (a bare view doing one durable INSERT, same server, same run):")
    for name, result, goal in (("floor", floor_result, None), ("allow", allow_result, 0.60),
                               ("pending", pending_result, 0.40)):
        ratio = result["rps"] / ref_rps
        verdict = f" ({'meets' if ratio >= goal else 'misses'} the ≥ {goal:.0%} goal)" if goal else ""
        print(f"  {name:8} {ratio:6.1%} of the reference, {result['rps'] / bare_rps:6.1%} of the bare read{verdict}")
    ruled_runs, unruled_runs = [], []
    for index in range(args.pairs):  # in turn without then with, with then without: drift falls on both
        for spec in ((unruled, allow) if index % 2 == 0 else (allow, unruled)):
            (ruled_runs if spec is allow else unruled_runs).append(measured(spec))
    # One connection per worker, each sending the two in turn: no request waits for a worker, and
    # both kinds meet the same load at the same moments, so their latencies differ by their work.
    mixed = run_load({**allow, "body": None, "bodies": [allow["body"], unruled["body"]],
                      "concurrency": args.workers, "seconds": args.pairs * args.seconds})
    cost = json.loads(subprocess.run(
        [sys.executable, __file__, "--rules-cost"], cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        input=json.dumps({"token": token, "body": allow["body"], "iterations": args.iterations,
                          "warmup": max(20, args.iterations // 10)})).stdout.strip().splitlines()[-1])
    report_rules(args, ruled_runs, unruled_runs, mixed, cost)
    return pgbench_entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--pairs", type=int, default=3,
                        help="pairs of allow phases without and with the rules, in alternating order")
    parser.add_argument("--iterations", type=int, default=1000, help="in-process timings of the rules")
    parser.add_argument("--server", choices=sorted(SERVERS), default="asgi",
                        help="asgi: uvicorn workers, as production (default); wsgi: gunicorn's sync workers")
    parser.add_argument("--pool", type=int, default=8,
                        help="PostgreSQL connections pooled per ASGI worker (0: one connection per request)")
    parser.add_argument("--quick", action="store_true", help="a sanity run: 2 s phases, 1 pair, 100 iterations")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.pairs, args.iterations = 2.0, 1, 100
    if args.pairs < 1 or args.iterations < 1:
        parser.error("--pairs and --iterations are at least 1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from export import BENCH_REDIS_URL, empty_redis, scratch_database, sequencer_process

    database_url = os.environ.get("RINGFENCE_BENCH_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("RINGFENCE_BENCH_REDIS_URL", BENCH_REDIS_URL)
    parts = urlsplit(database_url)
    empty_redis(redis_url)  # refuses the test suite's database 0
    with scratch_database(parts.path.lstrip("/"), server=parts._replace(path="").geturl()):
        from django.db import connection, connections

        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {DURABLE_TABLE} (LIKE audit_entry INCLUDING ALL)")
        env = server_env(database_url, redis_url)
        env.update(RINGFENCE_VAR_DIR=os.environ["RINGFENCE_VAR_DIR"], AUDIT_SEQUENCER="background")
        (Path(env["RINGFENCE_VAR_DIR"]) / "staticfiles").mkdir(exist_ok=True)
        if args.server == "asgi":
            env["DATABASE_CONN_MAX_AGE"] = "0"  # as production under ASGI (config/asgi.py)
            env["DATABASE_POOL_MAX_SIZE"] = str(args.pool)  # as the web unit (deploy/systemd)
        token = subprocess.run([sys.executable, "-c", SEED], cwd=ROOT, env=env, check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1]
        try:
            with sequencer_process(env):
                proc, port = start_server(env, args.workers, server=args.server)
                mark = last_entry_id()  # the seed's entries are not the run's
                try:
                    pgbench_entries = run_phases(args, env, token, port, database_url)
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                print(sequencing_lag(mark, pgbench_entries))
        finally:
            connections.close_all()
            left = empty_redis(redis_url)
            print(f"Redis {redis_url}: {left} key(s) the run left (queued timer and notice messages, rate-limit "
                  "windows), now emptied")


if __name__ == "__main__":
    if sys.argv[1:] == ["--load"]:
        print(json.dumps(load(json.load(sys.stdin))))
    elif sys.argv[1:] == ["--pgbench-script"]:
        print(pgbench_script(json.load(sys.stdin)))
    elif sys.argv[1:] == ["--rules-cost"]:
        print(json.dumps(rules_cost(json.load(sys.stdin))))
    else:
        main()
