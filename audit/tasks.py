from __future__ import annotations

import logging

from celery import shared_task

from audit import log as audit
from audit import views as auditing

logger = logging.getLogger(__name__)


@shared_task
def write_checkpoint_if_due() -> int | None:
    """Beat heartbeat: sign the chain head once per AUDIT_CHECKPOINT_INTERVAL_SECONDS, even when idle."""
    cp = audit.write_checkpoint_if_due()
    return cp.head_seq if cp else None


# Read-only and long for a big chain: a redelivery only verifies again.
@shared_task(soft_time_limit=3600, time_limit=3660)
def verify_audit_chain(job_id: str, owner: int) -> None:
    """The auditors' "verify" page: run the verifier over the database chain, reporting progress."""
    auditing.run_chain_verification(job_id, owner)
