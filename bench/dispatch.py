"""Dispatch throughput and latency beside the machine's own limit, measured in the same run.

    .venv/bin/python bench/dispatch.py [--seconds 8] [--concurrency 8] [--workers 2] [--pairs 3]
                                       [--iterations 1000]

Starts gunicorn (the production server) on a fresh benchmark database, then drives it from a
separate load process:

1. a bare Django view doing one PostgreSQL query, through the same middleware: the ceiling
   this machine, server and database allow;
2. the floor (`/bench/floor`): the least a dispatch answering `allow` must do, in raw SQL with
   no ORM, ninja or pydantic: one read (token, account, scope, action), the Redis rate-limit
   script, one durable write in one round trip (workflow share lock, idempotency record, audit
   append under the chain lock, commit);
3. POST /api/v1/dispatch answering `allow` (token check, rate limit, idempotency key, audit);
4. POST /api/v1/dispatch answering `pending` (plus an approval request, its timer and notice);
5. the database alone: the floor's read and write driven by pgbench (when it is installed) from
   as many connections as the server has workers, with no web server at all;
6. both dispatch paths again at half of their measured rate, for latency under normal load;
7. what the action's rules cost. The allowed action (`send_receipt`) carries a policy of 20 rules
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
answer, and the ratios (target: dispatch ≥ 50 % of the bare rate, p99 < 25 ms at half load).
Configuration: RINGFENCE_BENCH_DATABASE_URL (default
postgres://ringfence:ringfence@127.0.0.1:5432/ringfence_bench_api, dropped and recreated),
RINGFENCE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0).

The module also serves as the benchmark's URL configuration (`bench.dispatch.urlpatterns`) and
WSGI application (`bench.dispatch:wsgi()`), so the bare view and the floor run in the very same
server.
"""

from __future__ import annotations

import argparse
import glob
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
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
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

def bare(request: HttpRequest) -> HttpResponse:
    """The yardstick: one indexed PostgreSQL query, a small JSON answer."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM governance_workflow WHERE slug = %s", ["refund-agent"])
        row = cursor.fetchone()
    return HttpResponse(json.dumps({"workflow": row[0] if row else None}), content_type="application/json")


# -- the floor: the least a dispatch answering `allow` must do ----------------------------------
# Check the token and the account, find the workflow in the account's scope and the action's risk
# (one read); count the request in Redis; then one durable write: share-lock the workflow (a pause
# waits for it), store the answer under the idempotency key, append the audit event to the hash
# chain under its lock, commit. Raw SQL in one round trip per step: no ORM, no ninja, no pydantic.

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
{append};
COMMIT
"""


def floor_write_sql() -> str:
    """The floor's write transaction, sent in one round trip."""
    from audit import log as audit

    return FLOOR_WRITE.format(append=audit._LOCK_AND_APPEND_SQL.strip())


def floor_params(body: dict, key: str, fingerprint: str, row: tuple) -> dict:
    """Everything the write needs: the answer, the idempotency record and the audit event."""
    from audit import log as audit
    from core import clock

    _token, account_id, account_name, workflow_id, slug, _paused, risk = row
    answer = json.dumps({"decision": "allow", "code": "within_autonomy", "workflow": slug, "action": body["action"],
                         "reason": f"{risk} risk runs without approval."})
    event = audit.append_params({
        "occurred_at": clock.now(), "actor_kind": "service", "actor_id": str(account_id), "actor_label": account_name,
        "action": "dispatch.allowed", "subject_type": "governance.workflow", "subject_id": str(workflow_id),
        "workflow_slug": slug, "reason": "",
        "data": {"action": body["action"], "parameters": body.get("parameters", {}), "idempotency_key": key},
    })
    return {**event, "workflow_id": workflow_id, "account_id": account_id, "key": key, "fingerprint": fingerprint,
            "answer": answer}


@csrf_exempt
def floor(request: HttpRequest) -> HttpResponse:
    """The floor as a view, in the same server as the bare view and the real dispatch."""
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
        return [path("bench/bare", bare), path("bench/floor", floor), path("", include("governance.urls"))]
    raise AttributeError(name)


def wsgi():
    """gunicorn's application factory: Ringfence's settings with this module's URLs."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    settings.ROOT_URLCONF = "bench.dispatch"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGFENCE_", "DATABASE_", "CELERY_", "REDIS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings", PYTHONPATH=str(ROOT), DATABASE_URL=database_url,
        REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, SECRET_KEY=secrets.token_urlsafe(50),
        AUDIT_CHECKPOINT_KEY=secrets.token_hex(32), ROLLOUT_WEBHOOK_SECRET=secrets.token_hex(32),
        RINGFENCE_VAR_DIR=str(ROOT / "var" / "bench"),
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


def start_server(env: dict[str, str], workers: int, log: Path | None = None) -> tuple[subprocess.Popen, int]:
    """gunicorn on a free port, answering /bench/bare; its output goes to `log` when given."""
    port = free_port()
    out = open(log, "ab") if log is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "bench.dispatch:wsgi()", "--bind", f"127.0.0.1:{port}",
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


def report(name: str, result: dict, bare_rps: float | None = None) -> None:
    ratio = f"  {result['rps'] / bare_rps:6.1%} of bare" if bare_rps else ""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--pairs", type=int, default=3,
                        help="pairs of allow phases without and with the rules, in alternating order")
    parser.add_argument("--iterations", type=int, default=1000, help="in-process timings of the rules")
    args = parser.parse_args()
    if args.pairs < 1 or args.iterations < 1:
        parser.error("--pairs and --iterations are at least 1")
    database_url = os.environ.get("RINGFENCE_BENCH_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("RINGFENCE_BENCH_REDIS_URL", DEFAULT_REDIS)

    fresh_database(database_url)
    env = server_env(database_url, redis_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    token = subprocess.run([sys.executable, "-c", SEED], cwd=ROOT, env=env, check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    proc, port = start_server(env, args.workers)
    try:
        base = {"host": "127.0.0.1", "port": port, "seconds": args.seconds, "concurrency": args.concurrency,
                "rate": 0}
        api = {**base, "method": "POST", "path": "/api/v1/dispatch",
               "headers": {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}}
        allow = {**api, "body": {"workflow": "refund-agent", "action": RULED, "parameters": PARAMETERS}}
        unruled = {**api, "body": {**allow["body"], "action": UNRULED}}
        pending = {**api, "body": {"workflow": "refund-agent", "action": "refund_customer",
                                   "parameters": PARAMETERS, "evidence": {"summary": "bench"}}}
        floor_spec = {**allow, "path": "/bench/floor"}
        run_load({**base, "method": "GET", "path": "/bench/bare", "headers": {}, "body": None, "seconds": 2})  # warm up

        print(f"gunicorn {args.workers} workers, load from a separate process with {args.concurrency} connections, "
              f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs")
        bare_result = measured({**base, "method": "GET", "path": "/bench/bare", "headers": {}, "body": None})
        report("bare view, one query", bare_result)
        floor_result = measured(floor_spec)
        report("floor: least an allow must do", floor_result, bare_result["rps"])
        allow_result = measured(allow)
        report(f"dispatch → allow ({RULES} rules)", allow_result, bare_result["rps"])
        pending_result = measured(pending)
        report("dispatch → pending", pending_result, bare_result["rps"])
        alone = database_alone(database_url, env, token, allow["body"], args.workers, args.seconds)
        if alone is None:
            print("database alone: pgbench not found, skipped")
        else:
            print(f"{'database alone: the floor via pgbench':34} {alone:8.1f} tx/s  "
                  f"({args.workers} connections, no web server)  {alone / bare_result['rps']:6.1%} of bare")
        for name, spec, result in (("allow", allow, allow_result), ("pending", pending, pending_result)):
            half = max(1.0, result["rps"] / 2)
            paced = run_load({**spec, "rate": half})
            report(f"dispatch → {name} at {half:.0f} req/s (half)", paced)
            verdict = "meets" if paced["p99_ms"] < 25 else "misses"
            print(f"{'':34} p99 at half load {paced['p99_ms']:.1f} ms: {verdict} the 25 ms target")
        for name, result in (("floor", floor_result), ("allow", allow_result), ("pending", pending_result)):
            ratio = result["rps"] / bare_result["rps"]
            print(f"ratio {name} / bare: {ratio:.2f} ({'meets' if ratio >= 0.5 else 'misses'} the 0.50 target)")
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:] == ["--load"]:
        print(json.dumps(load(json.load(sys.stdin))))
    elif sys.argv[1:] == ["--pgbench-script"]:
        print(pgbench_script(json.load(sys.stdin)))
    elif sys.argv[1:] == ["--rules-cost"]:
        print(json.dumps(rules_cost(json.load(sys.stdin))))
    else:
        main()
