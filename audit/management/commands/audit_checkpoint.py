from __future__ import annotations

from django.core.management.base import BaseCommand

from audit import log as audit


class Command(BaseCommand):
    help = "Sign the current head of the audit chain now (also done by beat on an interval)."

    def handle(self, *args, **options) -> None:
        cp = audit.write_checkpoint("on_demand")
        self.stdout.write(f"checkpoint #{cp.head_seq} {cp.head_hash} at {audit.format_time(cp.created_at)}")
