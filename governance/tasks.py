from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


def publish(task, args: tuple = (), **options) -> bool:
    """Send `task` after a commit without ever breaking the committed change: if the broker is
    away the message is dropped with a warning and False returned. Callers whose work must not be
    lost keep it in the database for a sweep (timers, rollout actions)."""
    try:
        task.apply_async(args, retry=False, **options)
    except Exception:  # the database is the truth
        logger.warning("could not publish %s%r", task.name, args, exc_info=True)
        return False
    return True


@shared_task
def write_checkpoint_if_due() -> int | None:
    """Beat heartbeat: sign the chain head once per AUDIT_CHECKPOINT_INTERVAL_SECONDS, even when idle."""
    from governance import audit

    cp = audit.write_checkpoint_if_due()
    return cp.head_seq if cp else None


# Read-only and long for a big chain: a redelivery only verifies again.
@shared_task(soft_time_limit=3600, time_limit=3660)
def verify_audit_chain(job_id: str, owner: int) -> None:
    """The auditors' "verify" page: run the verifier over the database chain, reporting progress."""
    from governance import auditing

    auditing.run_chain_verification(job_id, owner)
