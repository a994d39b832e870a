"""Timers under broker faults, on real Celery workers and beat (TMR-02, 04, 05, 06, 07, 10).

The database's due_at is the timer; countdown messages only add precision. Durations are
shortened from RELIABILITY.md so the whole reliability run stays within minutes; each test says
what it used.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from django.conf import settings

from approvals.models import ApprovalRequest
from config.celery import app as celery_app
from core import clock
from tests.reliability.agents import ALLOWED, api_token, decide, dispatch
from tests.reliability.approval_timers import FIRE, SWEEP, ask, doubled, short_policy, timer_events
from tests.reliability.processes import SWEEP_SECONDS
from tests.reliability.waiting import wait_until
from tests.reliability.web import session_headers

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


def _runs(services, task: str, request_id: int, event: str = "start") -> list[dict]:
    return [r for r in services.task_runs(task, event) if r["args"][:1] == [request_id]]


# -- TMR-02 ------------------------------------------------------------------------------------
VISIBILITY_S, COUNTDOWN_S = 5, 20


def test_tmr02_countdown_beyond_the_visibility_timeout_is_delivered_again_but_fires_once(
        services, figures, admin_user, workflow, agent):
    """Two workers whose Redis visibility timeout (5 s) is shorter than the countdown (20 s) that
    the web process published (it assumed 7200 s): Redis hands the message out again."""
    for worker in [services.worker(name, ready=False, CELERY_VISIBILITY_TIMEOUT=VISIBILITY_S) for name in ("w1", "w2")]:
        worker.wait_for_ready()
    short_policy(admin_user, workflow, COUNTDOWN_S, 600)
    req = ask(workflow, agent, 1)  # on commit: the countdown message for due_at

    wait_until(lambda: timer_events([req]), COUNTDOWN_S + 30, "the request escalated")
    deliveries = wait_until(
        lambda: (starts := _runs(services, FIRE, req.pk)) and len(starts) == len(_runs(services, FIRE, req.pk, "end"))
        and len(starts), 15, "every delivered copy of the timer finished")
    events = timer_events([req])
    fresh = ApprovalRequest.objects.get(pk=req.pk)
    holders = sorted({r["hostname"] for r in _runs(services, FIRE, req.pk)})
    figures.report("TMR-02", f"countdown {COUNTDOWN_S} s > visibility timeout {VISIBILITY_S} s: "
                             f"{deliveries} deliveries "
                             f"(on {', '.join(holders)}), transitions {len(events)}",
                   deliveries=deliveries, transitions=len(events))
    assert deliveries >= 2, "Redis redelivers a countdown held longer than the visibility timeout (E1)"
    assert len(events) == 1 and fresh.level == 1 and fresh.state == ApprovalRequest.State.PENDING


# -- TMR-04 ------------------------------------------------------------------------------------
TIMERS, DUE_S, OUTAGE_S = 50, 8, 12  # RELIABILITY.md: Redis down 30 s; 12 s covers every deadline here


def test_tmr04_timers_due_while_redis_is_down_all_fire_once_after_it_returns(
        services, private_redis, figures, admin_user, workflow, agent):
    worker, beat = services.worker(ready=False), services.beat(ready=False)
    worker.wait_for_ready()
    beat.wait_for_ready()
    worker.supervise()
    beat.supervise()
    short_policy(admin_user, workflow, DUE_S, 600)
    started = time.monotonic()
    requests = [ask(workflow, agent, n) for n in range(TIMERS)]  # each publishes its countdown on commit
    creating = time.monotonic() - started
    assert creating < DUE_S, f"creating {TIMERS} requests took {creating:.1f} s; every deadline must fall in the outage"

    private_redis.shutdown_nosave()  # queued and held countdown messages are gone
    down_at = time.time()
    time.sleep(OUTAGE_S)  # the outage's length is the test's input
    private_redis.start()
    back_at = time.time()
    assert all(r.due_at.timestamp() < back_at for r in requests)

    wait_until(lambda: len({e.subject_id for e in timer_events(requests)}) == TIMERS, 90,
               f"all {TIMERS} requests escalated")
    events = timer_events(requests)
    fired = {int(e.subject_id): e.occurred_at.timestamp() for e in events}
    due = {r.pk: r.due_at.timestamp() for r in requests}
    during = sorted(fired[pk] - due[pk] for pk in fired if fired[pk] < back_at)
    after = sorted(fired[pk] - back_at for pk in fired if fired[pk] >= back_at)
    p99 = after[max(0, -(-len(after) * 99 // 100) - 1)] if after else 0.0
    levels = set(ApprovalRequest.objects.filter(pk__in=due).values_list("level", flat=True))
    figures.report("TMR-04", f"Redis down {back_at - down_at:.0f} s (RELIABILITY.md: 30 s) with {TIMERS} timers due: "
                             f"{len(fired)}/{TIMERS} escalated, doubled {doubled(events)}; {len(during)} fired during "
                             f"the outage, {len(after)} after it with lag max {max(after, default=0):.1f} s / "
                             f"p99 {p99:.1f} s (target <= sweep {SWEEP_SECONDS} s + 1 s); "
                             f"worker restarts {worker.restarts}, beat restarts {beat.restarts}",
                   escalated=len(fired), doubled=doubled(events), lag_max_s=round(max(after, default=0), 2),
                   lag_p99_s=round(p99, 2), worker_restarts=worker.restarts, beat_restarts=beat.restarts)
    assert len(fired) == TIMERS and doubled(events) == 0 and levels == {1}
    assert p99 <= SWEEP_SECONDS + 1, "worker and beat reconnect within BROKER_RECONNECT_MAX_SECONDS (RELIABILITY 4.3)"


# -- TMR-10 ------------------------------------------------------------------------------------
HELD, HELD_DUE_S = 5, 20  # due after the first worker's soft shutdown (10 s) has handed them over


def test_tmr10_warm_shutdown_hands_held_countdowns_to_the_other_worker_on_time(
        services, private_redis, figures, admin_user, workflow, agent):
    """The worker holding countdown messages gets SIGTERM; the second worker runs each once, on time."""
    first = services.worker("first")
    short_policy(admin_user, workflow, HELD_DUE_S, 600)
    requests = [ask(workflow, agent, n) for n in range(HELD)]
    wait_until(lambda: private_redis.client().llen("celery") == 0, 10, "the first worker holds every message")
    services.worker("second")
    code = first.terminate(timeout=60)  # warm shutdown: held ETA messages go back to the queue
    wait_until(lambda: len(timer_events(requests)) >= HELD, HELD_DUE_S + 30, f"all {HELD} timers fired")
    events = timer_events(requests)
    late = sorted(e.occurred_at.timestamp() - r.due_at.timestamp()
                  for e in events for r in requests if str(r.pk) == e.subject_id)
    runs = {pk: [r["hostname"] for r in _runs(services, FIRE, pk)] for pk in (r.pk for r in requests)}
    figures.report("TMR-10", f"SIGTERM to the worker holding {HELD} countdowns of {HELD_DUE_S} s (exit {code}): "
                             f"each ran {sorted({len(h) for h in runs.values()})} time(s) on "
                             f"{sorted({h for hs in runs.values() for h in hs})}; lateness p99 {late[-1]:.2f} s",
                   lateness_p99_s=round(late[-1], 2), exit_code=code)
    assert code == 0
    assert doubled(events) == 0 and len(events) == HELD
    assert all(len(hosts) == 1 for hosts in runs.values()), runs
    assert late[-1] < 2.0, "the handed-over countdowns ran on time, not after a visibility timeout"


# -- TMR-07 ------------------------------------------------------------------------------------
LOST, LOST_DUE_S = 10, 2


def test_tmr07_overdue_timers_whose_messages_were_purged_fire_once_beat_is_back(
        services, figures, admin_user, workflow, agent):
    short_policy(admin_user, workflow, LOST_DUE_S, 600)
    requests = [ask(workflow, agent, n) for n in range(LOST)]
    purged = celery_app.control.purge()  # every countdown message is lost; beat is not running
    worker = services.worker()
    wait_until(lambda: all(r.due_at < clock.now() for r in requests), LOST_DUE_S + 5, "every timer is overdue")
    time.sleep(2)  # overdue with a worker but no beat and no message: nothing may fire by itself
    assert timer_events(requests) == []
    beat = services.beat()
    beat_up = time.time()
    wait_until(lambda: len(timer_events(requests)) >= LOST, 30, f"all {LOST} overdue timers fired")
    events = timer_events(requests)
    first_sweep = min(r["t"] for r in services.task_runs(SWEEP)) - beat_up
    lag = max(e.occurred_at.timestamp() for e in events) - beat_up
    figures.report("TMR-07", f"{purged} messages purged, beat down: 0 timers fired; beat's first sweep "
                             f"{first_sweep:.2f} s after it started (schedule {SWEEP_SECONDS} s), {LOST}/{LOST} fired "
                             f"by {lag:.2f} s, doubled {doubled(events)}",
                   purged=purged, first_sweep_s=round(first_sweep, 2), lag_s=round(lag, 2))
    assert purged >= LOST and worker.alive() and beat.alive()
    assert doubled(events) == 0 and len(events) == LOST
    assert first_sweep <= SWEEP_SECONDS + 2


# -- TMR-06 ------------------------------------------------------------------------------------
WINDOW_S, BATCHES, PER_BATCH = 10, 3, 5  # RELIABILITY.md: two beats for 60 s
SENT_SWEEP = "Sending due task sweep-due-timers"


def test_tmr06_two_beats_sweep_twice_as_often_and_never_transition_twice(
        services, figures, admin_user, workflow, agent):
    processes = [services.worker(ready=False), *(services.beat(name, ready=False) for name in ("beat1", "beat2"))]
    for process in processes:
        process.wait_for_ready()
    beats = processes[1:]
    short_policy(admin_user, workflow, 1, 1, 1)  # escalate, escalate, expire: three timer transitions each
    started = time.monotonic()
    sent_before = [beat.output().count(SENT_SWEEP) for beat in beats]
    requests = []
    for batch in range(BATCHES):
        requests += [ask(workflow, agent, batch * PER_BATCH + n) for n in range(PER_BATCH)]
        time.sleep(WINDOW_S / BATCHES)  # batches spread over the window
    wait_until(lambda: len(timer_events(requests)) >= 3 * len(requests), 30,
               "every request escalated twice and expired")
    window = time.monotonic() - started
    sent = [beat.output().count(SENT_SWEEP) - before for beat, before in zip(beats, sent_before, strict=True)]
    events = timer_events(requests)
    states = set(ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).values_list("state", flat=True))
    figures.report("TMR-06", f"two beats for {window:.0f} s (RELIABILITY.md: 60 s) sent {sent[0]} + {sent[1]} sweeps "
                             f"({sum(sent) / window:.1f}/s with a {SWEEP_SECONDS} s schedule), {len(events)} timer "
                             f"transitions of {len(requests)} requests, doubled {doubled(events)}",
                   sweeps=sum(sent), window_s=round(window), doubled=doubled(events))
    assert all(n >= 0.5 * window / SWEEP_SECONDS for n in sent), "both beats sent their sweeps"
    assert doubled(events) == 0 and len(events) == 3 * len(requests)
    assert states == {ApprovalRequest.State.EXPIRED}


# -- TMR-05 ------------------------------------------------------------------------------------
HANG_S, DECISIONS, DUE_IN_HANG = 16, 4, 5  # RELIABILITY.md: SIGSTOP 20 s
SOCKET_TIMEOUT_S = settings.REDIS_SOCKET_TIMEOUT_SECONDS  # broker and cache; the processes run with the default
PUBLISHES_PER_DECISION = 2  # the outcome handlers and the "decided" notice


def test_tmr05_redis_hang_commits_decisions_fails_the_api_closed_and_loses_no_timer(
        services, private_redis, figures, admin_user, workflow, agent, approver):
    token = api_token(admin_user, workflow, agent)
    web = services.web(workers=DECISIONS + 1, ready=False)  # one left for the API call
    for process in (services.worker(ready=False), services.beat(ready=False)):
        process.wait_for_ready()
    web.wait_ready()
    short_policy(admin_user, workflow, 600)
    to_decide = [ask(workflow, agent, n) for n in range(DECISIONS)]
    short_policy(admin_user, workflow, 4, 600)  # requests asked from now on fall due during the hang
    timed = [ask(workflow, agent, 100 + n) for n in range(DUE_IN_HANG)]
    browser = session_headers(approver)

    private_redis.freeze()
    frozen = time.monotonic()
    results: dict[int, object] = {}

    def approve(req) -> None:
        try:
            results[req.pk] = decide(web, browser, req.pk, timeout=90)
        except OSError as exc:
            results[req.pk] = exc

    _, api_answer = dispatch(web, token, workflow, ALLOWED)  # the rate limiter cannot reach Redis
    threads = [threading.Thread(target=approve, args=(req,), daemon=True) for req in to_decide]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, HANG_S - (time.monotonic() - frozen)))  # the hang's length is the test's input
    private_redis.thaw()
    thawed = time.time()
    for thread in threads:
        thread.join(90)

    latencies = sorted(r.seconds for r in results.values() if hasattr(r, "seconds"))
    statuses = Counter(getattr(r, "status", repr(r)) for r in results.values())
    approved = ApprovalRequest.objects.filter(pk__in=[r.pk for r in to_decide], state="approved").count()
    wait_until(lambda: len(timer_events(timed)) >= DUE_IN_HANG, 60, "the timers due during the hang fired")
    events = timer_events(timed)
    lag = max(e.occurred_at.timestamp() for e in events) - thawed
    bound = PUBLISHES_PER_DECISION * SOCKET_TIMEOUT_S + 3
    api_bound = 2 * settings.API_RATE_LIMIT_REDIS_TIMEOUT + 1  # connect, then one command
    figures.report("TMR-05", f"Redis SIGSTOPped {HANG_S} s (RELIABILITY.md: 20 s): {DECISIONS} decisions on the page "
                             f"answered {dict(statuses)} after p50 {latencies[len(latencies) // 2]:.1f} s / max "
                             f"{latencies[-1]:.1f} s (bound {bound:g} s: {PUBLISHES_PER_DECISION} messages x socket "
                             f"timeout {SOCKET_TIMEOUT_S:g} s), {approved}/{DECISIONS} committed; API dispatch "
                             f"{api_answer.status} in {api_answer.seconds:.2f} s "
                             f"(fails closed, bound {api_bound:g} s); "
                             f"{len(events)}/{DUE_IN_HANG} timers due in the hang fired, last {lag:.1f} s after "
                             "SIGCONT, "
                             f"doubled {doubled(events)}",
                   decision_p50_s=round(latencies[len(latencies) // 2], 1), decision_max_s=round(latencies[-1], 1),
                   api_s=round(api_answer.seconds, 2), timers_lost=DUE_IN_HANG - len(events), lag_s=round(lag, 1))
    assert statuses == Counter({302: DECISIONS}) and approved == DECISIONS
    assert latencies[-1] <= bound, "a page that publishes gives up on the hung broker after its socket timeout"
    assert api_answer.status == 503 and api_answer.content_type == "application/problem+json"
    assert api_answer.seconds <= api_bound
    assert len(events) == DUE_IN_HANG and doubled(events) == 0
