from __future__ import annotations

from celery import shared_task


@shared_task
def write_checkpoint_if_due() -> int | None:
    """Beat heartbeat: sign the chain head once per AUDIT_CHECKPOINT_INTERVAL_SECONDS, even when idle."""
    from governance import audit

    cp = audit.write_checkpoint_if_due()
    return cp.head_seq if cp else None
