"""A record of every task run in a worker under fault test (`celery worker --include` this).

Each task start and end is appended as one JSON line to $RINGFENCE_TASK_LOG, so a test can
count deliveries (a countdown task delivered twice runs twice) against the transitions the
database holds. The app, its settings and tasks stay the production ones.
"""

from __future__ import annotations

import json
import os
import time

from celery.signals import task_postrun, task_prerun

LOG = os.environ.get("RINGFENCE_TASK_LOG")


def _append(event: str, task_id: str, task, args, **extra) -> None:
    if not LOG:
        return
    line = json.dumps({"event": event, "task": task.name, "id": task_id, "args": list(args or ()),
                       "pid": os.getpid(), "t": time.time(), **extra}, default=str)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@task_prerun.connect
def _started(task_id=None, task=None, args=None, **_):
    eta = getattr(task.request, "eta", None)
    _append("start", task_id, task, args, eta=eta, hostname=task.request.hostname)


@task_postrun.connect
def _finished(task_id=None, task=None, args=None, state=None, retval=None, **_):
    _append("end", task_id, task, args, state=state, retval=retval)
