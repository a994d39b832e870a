from __future__ import annotations

import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from audit import sequencing


class Command(BaseCommand):
    help = ("Run the audit log's sequencer: place accepted entries in the log and the Merkle tree, and sign "
            "checkpoints. Start as many as you like: one works at a time (the others wait their turn).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="sequence what is pending now, then exit")

    def handle(self, *args, once: bool = False, **options) -> None:
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not once:
            self.stdout.write("audit sequencer: running")
            self.stdout.flush()
        while not stopping:
            close_old_connections()
            try:
                done = sequencing.sequence_pending()
                sequencing.sign_tree_head_if_due()
            except sequencing.SequencingError as exc:  # a tampered entry: stop placing, keep saying so
                self.stderr.write(f"audit sequencer: {exc}")
                done = 0
                time.sleep(5)
            if once:
                self.stdout.write(f"sequenced {done} entr{'y' if done == 1 else 'ies'}")
                return
            if not done:
                time.sleep(settings.AUDIT_SEQUENCER_POLL_SECONDS)
