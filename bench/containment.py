#!/usr/bin/env python3
"""Containment scenario replay: how fast real regressions are rolled back at each autonomy tier,
and what is not rolled back (tagged expected changes, noise, too little data), against a live
Ringfence: gunicorn, a Celery worker and beat, signals posted to `POST /api/v1/signals`.

    .venv/bin/python bench/containment.py [--plans 30] [--window 5] [--sustained 2] [--human-delay 5]

Plans are spread evenly over tiers 1, 2 (an override window of `--window` s) and 3 (a gate; a
containment owner approves `--human-delay` s after the request appears, through the approvals
service). Per tier, about half the plans see a real regression (p95 latency sustained above the
trigger's 800 ms), a fifth a tagged expected change (a 25 % latency tag, then a rise inside it),
a fifth noise (isolated spikes above 800 ms, never sustained) and the rest low traffic (one sample
every 5 s: too few for the trigger and the criteria, so inconclusive). Every plan's agent posts
one batch every 0.5 s from a separate thread pool; the product runs with its default cadences
(evaluation debounce 1 s, beat evaluation 15 s, sweeps 5 s).

"First breaching sample" is the moment the first batch carrying a breaching sample was sent
(its `observed_at` too); "executed" is the rollback action's `closed_at`, written when the
executor succeeded. The trigger holds only once every sample of its sustained-for window
breaches, so the figure includes that window by design; the figure beyond it is compared with
this machine's limits measured in the same run: a bare HTTP request to the same gunicorn and a
Celery ping round trip through the same Redis. Each tier also shows where the time went (breach →
proposed → request closed → outcome handled → executor started → executed, from the actions,
requests, audit events and attempts), and the load average before the replay: the machine may be
shared, and a loaded one shows up as longer waits between those steps. `--keep-logs` keeps the
server's, worker's (one line per task) and beat's logs.

Configuration: RINGFENCE_BENCH_DATABASE_URL (default postgres://ringfence:ringfence@127.0.0.1:5432/
ringfence_bench_containment: created, migrated and dropped here), RINGFENCE_BENCH_REDIS_URL
(default redis://127.0.0.1:6379/12; its Celery queue is purged).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatch import fresh_database, percentile, server_env, start_server  # noqa: E402  (bench/ is the script's directory)

DEFAULT_DB = "postgres://ringfence:ringfence@127.0.0.1:5432/ringfence_bench_containment"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
THRESHOLD = 800  # the trigger: latency_p95_ms > 800 sustained for --sustained s, at least 3 samples
TAG_PERCENT = 25  # the tag widens it to 1000 ms
CADENCE, LOW_TRAFFIC_CADENCE = 0.5, 5.0
WARMUP, SPREAD = 4.0, 10.0  # healthy samples first; the rises start spread over SPREAD s
KINDS = ("regression", "tagged", "noise", "low_traffic")
TARGET_P99 = {1: lambda window: 10.0, 2: lambda window: window + 5.0}


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Scenario:
    index: int
    tier: int
    kind: str
    rise_at: float | None  # seconds after the feed starts
    cadence: float
    slug: str = ""
    plan_id: int = 0
    sent: int = 0
    first_breach_at: float | None = None  # wall-clock time the first breaching batch was sent
    stopped: str = ""  # why its agent stopped posting (the plan is no longer live)
    posting: bool = False  # an agent sends its next batch once the last one was answered
    rng: random.Random = field(default_factory=random.Random)

    @property
    def segment(self) -> str:
        return f"internal_team:ops-{self.index}"

    def latency(self, elapsed: float) -> float:
        rising = self.rise_at is not None and elapsed >= self.rise_at
        if self.kind == "regression" and rising:
            return self.rng.uniform(880, 980)
        if self.kind == "tagged" and rising:
            return self.rng.uniform(850, 930)  # above 800, inside the tag's 1000
        if self.kind == "noise":
            return self.rng.uniform(820, 900) if self.sent % 6 == 5 else self.rng.uniform(650, 790)
        if self.kind == "low_traffic":
            return self.rng.uniform(880, 980)  # breaching, but one sample per 5 s proves nothing
        return self.rng.uniform(640, 760)


def scenarios_for(plans: int, seed: int) -> list[Scenario]:
    """Plans spread over the tiers; within a tier, half regressions, a fifth each tagged and noise."""
    out = []
    for index in range(plans):
        tier = index % 3 + 1
        rank = index // 3  # position within its tier
        per_tier = len(range(tier - 1, plans, 3))
        shares = [max(1, round(per_tier * 0.5)), max(1, round(per_tier * 0.2)), max(1, round(per_tier * 0.2))]
        kind = KINDS[3]
        for position, bound in enumerate([sum(shares[:i + 1]) for i in range(3)]):
            if rank < bound:
                kind = KINDS[position]
                break
        out.append(Scenario(index, tier, kind, None, LOW_TRAFFIC_CADENCE if kind == "low_traffic" else CADENCE,
                            rng=random.Random(seed * 1000 + index)))
    rising = [s for s in out if s.kind in ("regression", "tagged")]
    for k, s in enumerate(rising):
        s.rise_at = WARMUP + SPREAD * k / max(1, len(rising))
    return out


# -- the installation ---------------------------------------------------------------------------

def seed(scenarios: list[Scenario], *, sustained: float, window: int) -> dict:
    """Users, one workflow and one started plan per scenario, the tier-2 override windows, a token."""
    from django.contrib.auth.models import Group, User

    from approvals import services as approvals
    from governance import services as governance
    from governance.models import ContainmentAssignment
    from governance.permissions import Role
    from rollouts import services
    from rollouts.models import Metric

    admin = User.objects.create_user("bench-admin", is_staff=True)
    admin.groups.add(Group.objects.get(name=Role.ADMINISTRATOR))
    owner = User.objects.create_user("bench-owner")
    owner.groups.add(Group.objects.get(name=Role.CONTAINMENT_OWNER))
    releaser = User.objects.create_user("bench-releaser")
    metric = {m.slug: m for m in Metric.objects.all()}
    workflows = []
    for s in scenarios:
        s.slug = f"bench-{s.kind.replace('_', '-')}-{s.index}"
        workflow = governance.create_workflow(
            actor=admin, slug=s.slug, name=f"Bench {s.kind} {s.index}", autonomy_tier=s.tier, off_hours_tier=None,
            timezone="UTC", business_days=list(range(7)), business_start=dt.time(0), business_end=dt.time(23, 59, 59))
        for duty in ContainmentAssignment.Duty.values:
            governance.assign_containment(workflow.pk, actor=admin, user=owner, duty=duty)
        if s.tier == 2:
            approvals.define_policy(actor=admin, workflow=workflow, mode="override_window",
                                    levels=[{"groups": [Role.CONTAINMENT_OWNER], "timeout_seconds": window}])
        soak = dt.timedelta(seconds=5) if s.kind == "low_traffic" else dt.timedelta(hours=1)
        plan = services.create_plan(
            actor=admin, workflow=workflow,
            fields={"name": "bench", "release_version": "v2", "stable_version": "v1", "fallback_mode": "human_review",
                    "executor": "flag"},
            rings=[{"segment_kind": "internal_team", "segment_value": f"ops-{s.index}", "exposure_percent": 100,
                    "min_soak": soak},
                   {"segment_kind": "traffic_slice", "segment_value": "all", "exposure_percent": 10,
                    "min_soak": dt.timedelta(hours=1), "approval_point": True}],
            criteria=[{"metric": metric["quality_score"], "operator": "gte", "threshold": Decimal("0.8"),
                       "window": dt.timedelta(minutes=2), "min_samples": 20},
                      {"metric": metric["cost_per_task"], "operator": "lte", "threshold": Decimal("0.05"),
                       "window": dt.timedelta(minutes=2), "min_samples": 20}],
            triggers=[{"metric": metric["latency_p95_ms"], "operator": "gt", "threshold": Decimal(THRESHOLD),
                       "sustained_for": dt.timedelta(seconds=sustained), "min_samples": 3, "severity": "critical"}])
        s.plan_id = services.start_rollout(plan.pk, actor=admin).pk
        workflows.append(workflow)
    account = governance.create_service_account(actor=admin, name="bench-agents", owner=releaser, workflows=workflows)
    return {"owner": owner, "token": governance.issue_token(account.pk, actor=admin).raw}


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind
    except ProcessLookupError:
        pass


def request(port: int, method: str, path: str, body: dict | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- machine limits, measured in the same run ----------------------------------------------------

def http_round_trips(port: int, count: int = 60) -> list[float]:
    for _ in range(10):  # warm-up: both gunicorn workers connected to the database
        request(port, "GET", "/bench/bare")
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = request(port, "GET", "/bench/bare")
        timings.append(time.perf_counter() - started)
        assert status == 200, status
    return timings


def celery_round_trips(worker: str, count: int = 30) -> list[float]:
    from governance.celery import app

    timings = []
    for _ in range(count):
        started = time.perf_counter()
        replies = app.control.ping(destination=[worker], timeout=2.0)
        if replies:
            timings.append(time.perf_counter() - started)
    return timings


def wait_for_worker(worker: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    from governance.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the Celery worker exited during start-up; see its log")
        if app.control.ping(destination=[worker], timeout=1.0):
            return
    raise SystemExit(f"the Celery worker did not answer within {timeout:.0f} s")


# -- the replay ----------------------------------------------------------------------------------

class Feed:
    """Each plan's agent posts one batch per cadence to the live server, from a thread pool."""

    def __init__(self, scenarios: list[Scenario], port: int, token: str) -> None:
        self.scenarios, self.port, self.token = scenarios, port, token
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.stopping = threading.Event()
        self.started = 0.0
        self.pings: list[float] = []  # Celery ping round trips while the replay runs

    def ping(self, worker: str) -> None:
        while not self.stopping.wait(0.5):
            self.pings.extend(celery_round_trips(worker, count=1))

    def post(self, s: Scenario) -> None:
        now = time.time()
        elapsed = now - self.started
        at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        value = s.latency(elapsed)
        samples = [{"metric": "latency_p95_ms", "value": round(value, 1), "observed_at": at, "segment": s.segment}]
        if s.kind == "low_traffic":
            samples.append({"metric": "quality_score", "value": 0.92, "observed_at": at, "segment": s.segment})
        s.sent += 1
        began = time.perf_counter()
        try:
            status, body = request(self.port, "POST", "/api/v1/signals", {"workflow": s.slug, "samples": samples},
                                   {"Authorization": f"Bearer {self.token}"})
        except OSError:
            status, body = 0, b"{}"
        finally:
            s.posting = False
        took = time.perf_counter() - began
        code = ""
        if status != 200:
            try:
                code = f" {json.loads(body).get('code', '')}".rstrip()
            except ValueError:
                code = " (not JSON)"
        with self.lock:
            self.latencies.append(took)
            self.statuses[f"{status}{code}"] = self.statuses.get(f"{status}{code}", 0) + 1
            if status == 200 and value > THRESHOLD and (s.first_breach_at is None or now < s.first_breach_at):
                s.first_breach_at = now
            if code == " no_live_rollout":  # rolled back: the agent gets the stable version now
                s.stopped = code

    def run(self) -> None:
        self.started = time.time()
        due = {s.index: self.started + (s.index % 10) * CADENCE / 10 for s in self.scenarios}
        with ThreadPoolExecutor(max_workers=16) as pool:
            while not self.stopping.is_set():
                now = time.time()
                for s in self.scenarios:
                    if not s.stopped and not s.posting and due[s.index] <= now:
                        due[s.index] = max(due[s.index] + s.cadence, now)
                        s.posting = True
                        pool.submit(self.post, s)
                time.sleep(0.005)


def approve_after(delay: float, owner, tier_3: list[Scenario], seen: dict[int, float]) -> None:
    """The human of tier 3: approves each pending rollback `delay` s after it was raised."""
    from approvals import services as approvals
    from approvals.models import ApprovalRequest
    from governance.errors import TransitionRefused

    pending = ApprovalRequest.objects.filter(state="pending", kind="rollback",
                                             rollout_actions__plan_id__in=[s.plan_id for s in tier_3])
    for request_id, created_at in pending.values_list("pk", "created_at"):
        seen.setdefault(request_id, created_at.timestamp())
        if time.time() >= seen[request_id] + delay:
            try:
                approvals.record_decision(request_id, actor=owner, verdict="approve",
                                          justification="p95 above the trigger, confirmed on the dashboard")
            except TransitionRefused as refusal:
                log(f"  approval of request {request_id} refused: {refusal.message}")


def replay(scenarios: list[Scenario], port: int, token: str, owner, worker: str, *, human_delay: float,
           timeout: float) -> Feed:
    from rollouts.models import RolloutPlan

    feed = Feed(scenarios, port, token)
    feeder = threading.Thread(target=feed.run, daemon=True)
    pinger = threading.Thread(target=feed.ping, args=(worker,), daemon=True)
    feeder.start()
    pinger.start()
    regressions = [s.plan_id for s in scenarios if s.kind == "regression"]
    tier_3 = [s for s in scenarios if s.kind == "regression" and s.tier == 3]
    last_rise = max((s.rise_at for s in scenarios if s.rise_at is not None), default=WARMUP)
    at_least = last_rise + 15  # the tagged, noisy and sparse plans keep running after the last regression
    seen: dict[int, float] = {}
    while True:
        time.sleep(0.2)
        elapsed = time.time() - feed.started
        approve_after(human_delay, owner, tier_3, seen)
        open_ = RolloutPlan.objects.filter(pk__in=regressions).exclude(state="rolled_back").count()
        if (open_ == 0 and elapsed >= at_least) or elapsed >= last_rise + timeout:
            break
    feed.stopping.set()
    feeder.join(timeout=60)
    pinger.join(timeout=10)
    return feed


# -- figures -------------------------------------------------------------------------------------

def seconds(values: list[float], pct: float) -> str:
    return f"{percentile(values, pct):5.2f} s" if values else "    – "


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def rollback_hops(rollback, first_breach_at: float, approved_at: float | None) -> list[tuple[str, float]]:
    """The legs from the first breaching sample to the executed rollback, in seconds."""
    proposed = rollback.created_at.timestamp()
    legs = [("breach → proposed", proposed - first_breach_at)]
    ready = proposed
    request = rollback.approval_request
    if request is not None and approved_at is not None:
        closed = request.closed_at.timestamp()
        legs += [("→ request closed", closed - proposed), ("→ outcome handled", approved_at - closed)]
        ready = approved_at
    attempts = list(rollback.attempt_log.all())
    if attempts:
        started = attempts[0].started_at.timestamp()
        legs += [("→ executor started", started - ready), ("→ executed", rollback.closed_at.timestamp() - started)]
    return legs


def report(scenarios: list[Scenario], feed: Feed, limits: dict, *, window: int, sustained: float,
           human_delay: float) -> None:
    from governance.models import AuditEvent
    from rollouts.models import RolloutAction

    actions = {}
    for action in (RolloutAction.objects.select_related("approval_request").prefetch_related("attempt_log")
                   .order_by("created_at")):
        actions.setdefault(action.plan_id, []).append(action)
    approved_at = {e.data["action"]: e.occurred_at.timestamp()
                   for e in AuditEvent.objects.filter(action="rollout.action_approved")}
    overheads: list[float] = []
    for tier in (1, 2, 3):
        mine = [s for s in scenarios if s.tier == tier]
        regressions = [s for s in mine if s.kind == "regression"]
        times: list[float] = []
        hops: dict[str, list[float]] = {}
        silent = 0
        for s in regressions:
            rollback = next((a for a in actions.get(s.plan_id, []) if a.kind == "rollback"), None)
            if rollback is None or rollback.state != "succeeded" or s.first_breach_at is None:
                continue
            executed = rollback.closed_at.timestamp()
            times.append(executed - s.first_breach_at)
            for name, took in rollback_hops(rollback, s.first_breach_at, approved_at.get(rollback.pk)):
                hops.setdefault(name, []).append(took)
            request = rollback.approval_request
            silent += request is not None and request.state == "auto_approved"
            if tier == 1:
                overheads.append(times[-1] - (sustained - CADENCE))
        label = {1: "tier 1 (autonomous)", 2: f"tier 2 (override window {window} s)",
                 3: f"tier 3 (gated; the human approves {human_delay:g} s after the request)"}[tier]
        share = len(times) / len(regressions) if regressions else 1.0
        log(f"\n{label}")
        log(f"  regressions contained            {len(times)}/{len(regressions)} ({share:.0%})   target 100 %: "
            f"{verdict(share == 1.0)}")
        line = (f"  first breaching sample → rollback executed  p50 {seconds(times, 50)}  p99 {seconds(times, 99)}"
                f"  (n={len(times)})")
        if tier in TARGET_P99:
            target = TARGET_P99[tier](window)
            line += f"   target p99 ≤ {target:g} s: {verdict(bool(times) and percentile(times, 99) <= target)}"
        else:
            line += "   no target: it waits for a human"
        log(line)
        log("    where the time went, p50 (p99): " + " · ".join(
            f"{name} {percentile(values, 50):.2f} ({percentile(values, 99):.2f})" for name, values in hops.items()))
        if tier == 2:
            log(f"    silence proceeded at the deadline for {silent}/{len(times)}")
        tagged = [s for s in mine if s.kind == "tagged"]
        auto = sum(1 for s in tagged for a in actions.get(s.plan_id, []) if a.kind in ("rollback", "fallback")
                   and (a.handling == "execute" or (a.approval_request and a.approval_request.state == "auto_approved")))
        asked = sum(1 for s in tagged for a in actions.get(s.plan_id, []) if a.kind in ("rollback", "fallback")
                    and a.state == "pending_approval")
        log(f"  tagged expected changes rolled back automatically {auto}/{len(tagged)}   target 0: "
            f"{verdict(auto == 0)}   (raised for a person: {asked})")
        noise = [s for s in mine if s.kind == "noise"]
        false = sum(1 for s in noise if any(a.kind in ("rollback", "fallback") for a in actions.get(s.plan_id, [])))
        log(f"  noise rolled back or proposed   {false}/{len(noise)}   target 0: {verdict(false == 0)}")
        sparse = [s for s in mine if s.kind == "low_traffic"]
        to_human = sum(1 for s in sparse if any(
            a.kind == "expand" and a.state == "pending_approval" and a.reason.startswith("inconclusive")
            for a in actions.get(s.plan_id, [])))
        rolled = sum(1 for s in sparse if any(a.kind == "rollback" for a in actions.get(s.plan_id, [])))
        log(f"  low traffic: inconclusive evaluations raised to a human {to_human}/{len(sparse)}   target all: "
            f"{verdict(to_human == len(sparse))}; rolled back on too few samples {rolled}   target 0: "
            f"{verdict(rolled == 0)}")

    http_p50, celery_p50 = percentile(limits["http"], 50), percentile(limits["celery"], 50)
    log(f"\nmachine limits (same run, before the replay; load average {limits['load']:.2f} on {os.cpu_count()} CPUs)")
    log(f"  bare HTTP request to the same gunicorn  p50 {http_p50 * 1000:6.1f} ms  p99 "
        f"{percentile(limits['http'], 99) * 1000:6.1f} ms")
    log(f"  Celery ping round trip (same Redis)     p50 {celery_p50 * 1000:6.1f} ms  p99 "
        f"{percentile(limits['celery'], 99) * 1000:6.1f} ms")
    log(f"  Celery ping during the replay           p50 {percentile(feed.pings, 50) * 1000:6.1f} ms  p99 "
        f"{percentile(feed.pings, 99) * 1000:6.1f} ms")
    log(f"  POST /api/v1/signals under the replay   p50 {percentile(feed.latencies, 50) * 1000:6.1f} ms  p99 "
        f"{percentile(feed.latencies, 99) * 1000:6.1f} ms  ({len(feed.latencies)} batches, statuses {feed.statuses})")
    if overheads:
        from django.conf import settings

        beyond = percentile(overheads, 50)
        log(f"ratios: tier 1 p50 beyond the earliest moment the trigger can hold ({sustained - CADENCE:g} s after the "
            f"first breaching sample: the {sustained:g} s window less the {CADENCE:g} s cadence) = {beyond:.2f} s = "
            f"{beyond / celery_p50:,.0f} Celery round trips = {beyond / http_p50:,.0f} bare HTTP requests; "
            f"inherent in it: the evaluation debounce ({settings.ROLLOUT_EVALUATION_DEBOUNCE_SECONDS:g} s; beat "
            f"evaluates every {settings.ROLLOUT_EVALUATION_SECONDS:g} s, timers swept every "
            f"{settings.TIMER_SWEEP_SECONDS:g} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=30)
    parser.add_argument("--window", type=int, default=5, help="tier 2 override window (s)")
    parser.add_argument("--sustained", type=float, default=2.0, help="the trigger's sustained-for window (s)")
    parser.add_argument("--human-delay", type=float, default=5.0, help="tier 3: approve this long after the request")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up this long after the last rise (s)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true", help="keep the server's, worker's and beat's logs")
    args = parser.parse_args()
    database_url = os.environ.get("RINGFENCE_BENCH_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("RINGFENCE_BENCH_REDIS_URL", DEFAULT_REDIS)
    began = time.monotonic()
    scenarios = scenarios_for(args.plans, args.seed)
    counts = {kind: sum(1 for s in scenarios if s.kind == kind) for kind in KINDS}
    log(f"containment replay: {args.plans} plans over tiers 1-3 ({counts}), trigger latency_p95_ms > "
        f"{THRESHOLD:g} sustained {args.sustained:g} s (≥ 3 samples), batches every {CADENCE:g} s, "
        f"{os.cpu_count()} CPUs")

    workdir = Path(tempfile.mkdtemp(prefix="ringfence-bench-containment-"))
    env = server_env(database_url, redis_url)
    (workdir / "var" / "staticfiles").mkdir(parents=True)
    env.update(RINGFENCE_VAR_DIR=str(workdir / "var"), ALLOWED_HOSTS="127.0.0.1,localhost",
               EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
    os.environ.update(env)
    fresh_database(database_url)
    processes: list[subprocess.Popen] = []
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        context = seed(scenarios, sustained=args.sustained, window=args.window)
        worker_name = f"bench-containment-{os.getpid()}@{socket.gethostname()}"
        level = "INFO" if args.keep_logs else "WARNING"  # INFO: one line per task received and done
        processes.append(spawn([sys.executable, "-m", "celery", "-A", "governance", "worker", "--loglevel", level,
                                "--pool", "prefork", "--concurrency", "2", "--purge", "--hostname", worker_name],
                               env, workdir / "worker.log"))
        processes.append(spawn([sys.executable, "-m", "celery", "-A", "governance", "beat", "--loglevel", "WARNING",
                                "--schedule", str(workdir / "celerybeat-schedule")], env, workdir / "beat.log"))
        server, port = start_server(env, args.workers, log=workdir / "gunicorn.log")
        processes.append(server)
        wait_for_worker(worker_name, processes[0])
        limits = {"http": http_round_trips(port), "celery": celery_round_trips(worker_name),
                  "load": os.getloadavg()[0]}
        ends = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        for s in scenarios:
            if s.kind == "tagged":
                status, body = request(port, "POST", "/api/v1/context-tags", {
                    "workflow": s.slug, "plan": s.plan_id, "kind": "expected_latency_increase",
                    "expected_change_percent": TAG_PERCENT, "ends_at": ends,
                    "reason": "the new retrieval step adds a round trip; p95 expected up to 25 %"},
                    {"Authorization": f"Bearer {context['token']}"})
                assert status == 201, body[:300]
        log(f"set up in {time.monotonic() - began:.0f} s; replaying")
        feed = replay(scenarios, port, context["token"], context["owner"], worker_name, human_delay=args.human_delay,
                      timeout=args.timeout)
        log(f"replayed {time.time() - feed.started:.0f} s")
        report(scenarios, feed, limits, window=args.window, sustained=args.sustained, human_delay=args.human_delay)
    except BaseException:
        log(f"logs of the worker and beat kept in {workdir}")
        raise
    else:
        if args.keep_logs:
            log(f"logs of gunicorn, the worker and beat: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for proc in reversed(processes):
            stop(proc)
        from django.db import connections

        connections.close_all()
        import psycopg

        parts = urlsplit(database_url)
        with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    log(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
