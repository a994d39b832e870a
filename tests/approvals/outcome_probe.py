"""Imported by test Celery workers (`--include`): an outcome handler standing in for an executor.

For every closed agent_action request it appends `<request id> <state> <executed>` to the file
named by RINGFENCE_OUTCOME_PROBE_FILE; it "executes" only approved and auto-approved requests,
as a real executor would.
"""

from __future__ import annotations

import os

from approvals import outcomes
from approvals.models import ApprovalRequest

EXECUTES_ON = {ApprovalRequest.State.APPROVED, ApprovalRequest.State.AUTO_APPROVED}


def record_outcome(request_id: int) -> None:
    state = ApprovalRequest.objects.values_list("state", flat=True).get(pk=request_id)
    with open(os.environ["RINGFENCE_OUTCOME_PROBE_FILE"], "a", encoding="utf-8") as fh:
        fh.write(f"{request_id} {state} {int(state in EXECUTES_ON)}\n")


outcomes.register(ApprovalRequest.Kind.AGENT_ACTION, record_outcome)
