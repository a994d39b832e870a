from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit import log as audit
from audit import sequencing
from audit.verify_audit import UnusableInput, default_workers, export_checkpoints, verify_export


class Command(BaseCommand):
    help = "Verify the audit chain in the database (or an export file) and name the first broken event."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--export", help="verify this JSON Lines export instead of the database")
        parser.add_argument("--checkpoints", help="checkpoint file shipped outside the database (JSON Lines)")

    def handle(self, *args, export: str | None = None, checkpoints: str | None = None, **options) -> None:
        from django.conf import settings

        try:
            extra = []
            if checkpoints:
                with open(checkpoints, encoding="utf-8") as fh:
                    extra = export_checkpoints(fh)
            if export:
                report = verify_export(export, settings.AUDIT_CHECKPOINT_KEY, extra, workers=default_workers(),
                                       public_key=sequencing.vkey())
            else:
                report = audit.verify_database(extra)
        except (OSError, UnusableInput) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(report.summary())
        if not report.ok:
            raise CommandError("the audit chain is broken", returncode=1)
