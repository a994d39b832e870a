from __future__ import annotations

import logging

from celery import shared_task

from audit import jobs, sequencing
from audit import log as audit

logger = logging.getLogger(__name__)


@shared_task
def sequence() -> int:
    """Beat, every AUDIT_MERGE_DELAY_SECONDS: the sequencer process's safety net (one sequencer
    works at a time, whoever wins the election), then a signed checkpoint if one is due."""
    done = sequencing.sequence_pending()
    sequencing.sign_tree_head_if_due()
    return done


@shared_task
def write_checkpoint_if_due() -> int | None:
    """Beat heartbeat: sign the chain head once per AUDIT_CHAIN_CHECKPOINT_SECONDS, even when idle."""
    cp = audit.write_checkpoint_if_due()
    return cp.head_seq if cp else None


# Read-only and long for a big chain: a redelivery only verifies again.
@shared_task(soft_time_limit=3600, time_limit=3660)
def verify_audit_chain(job_id: str, owner: int) -> None:
    """The auditors' "verify" page: run the verifier over the database chain, reporting progress."""
    jobs.run_chain_verification(job_id, owner)


# Read-only: a redelivery checks the file again, or finds it already checked and gone.
@shared_task(soft_time_limit=3600, time_limit=3660)
def verify_audit_upload(upload_id: str) -> str:
    """The auditors' "verify" page: check an uploaded export file, reporting progress, then drop it."""
    return jobs.run_upload_verification(upload_id)
