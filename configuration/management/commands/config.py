"""manage.py config plan|apply|export|schema — Ringfence as code.

    config plan FILE [--prune]          what would change; exit 0 nothing, 2 something, 1 invalid
    config apply FILE [--prune] --as U  apply the whole plan in one transaction, as administrator U
    config export                       the live configuration as YAML (`export | plan -`: no change)
    config schema                       the JSON Schema of the file

FILE is a file, a folder of *.yaml files, or - for standard input.
"""

from __future__ import annotations

import json
import sys

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from configuration import document, exporting, loading, planning


class Command(BaseCommand):
    help = "Plan, apply or export Ringfence's configuration as code (ringfence.yaml)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        for verb in ("plan", "apply"):
            p = sub.add_parser(verb)
            p.add_argument("file", help="ringfence.yaml, a folder of .yaml files, or - for standard input")
            p.add_argument("--prune", action="store_true",
                           help="also remove actions, scope grants and containment duties the file does not name")
        sub.choices["apply"].add_argument("--as", dest="actor", required=True,
                                          help="username of the administrator applying it (audited)")
        sub.add_parser("export")
        schema = sub.add_parser("schema")
        schema.add_argument("--output", "-o", help="write to this file instead of standard output")

    def handle(self, *args, verb: str, **options) -> None:
        if verb == "export":
            self.stdout.write(exporting.export_yaml(), ending="")
            return
        if verb == "schema":
            text = json.dumps(document.json_schema(), indent=2) + "\n"
            if options.get("output"):
                with open(options["output"], "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                self.stdout.write(text, ending="")
            return
        try:
            if options["file"] == "-":
                raw = sys.stdin.read()
                doc, source = loading.load_text(raw, "<stdin>")
            else:
                raw = _raw(options["file"])
                doc, source = loading.load(options["file"])
            plan = planning.plan(doc, source, prune=options["prune"])
            if verb == "apply":
                actor = User.objects.filter(username=options["actor"], is_active=True).first()
                if actor is None:
                    raise CommandError(f"No active user {options['actor']!r}.")
                if not plan.empty:
                    planning.apply(plan, actor=actor, digest=planning.sha256(raw), origin=options["file"],
                                   via="manage.py config apply")
        except loading.ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(str(problem))
            self.stderr.write(f"{len(exc.problems)} problem(s); nothing was changed.")
            sys.exit(1)
        self.stdout.write(plan.text())
        if verb == "apply":
            self.stdout.write("Applied." if not plan.empty else "Nothing to apply.")
        elif not plan.empty:
            sys.exit(2)


def _raw(path: str) -> bytes:
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        return b"".join(p.name.encode() + b"\0" + p.read_bytes()
                        for p in sorted(target.iterdir()) if p.suffix in (".yaml", ".yml"))
    return target.read_bytes() if target.exists() else b""
