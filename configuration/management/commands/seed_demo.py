from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand

from governance.demo import DEMO_PASSWORD, PEOPLE

# Each app may add its part of the demo story in <app>/demo.py with a seed() function.
DEMO_MODULES = ("governance.demo", "configuration.demo", "approvals.demo", "rollouts.demo")


class Command(BaseCommand):
    help = "Seed the demo story (idempotent: a second run changes nothing)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--print-logins", action="store_true", help="print the demo logins and password")

    def handle(self, *args, print_logins: bool = False, **options) -> None:
        created = []
        for name in DEMO_MODULES:
            try:
                module = import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                continue
            result = module.seed()
            created += getattr(result, "created", []) or []
        self.stdout.write(f"demo: {len(created)} new object(s)"
                          + (f": {', '.join(created)}" if created else " (already seeded)"))
        if print_logins:
            self.stdout.write(f"demo logins (password {DEMO_PASSWORD!r}):")
            for username, _full_name, role in PEOPLE:
                self.stdout.write(f"  {username:<8} {role}")
            self.stdout.write(f"demo agent token: {settings.VAR_DIR / 'demo-agent-token'}")
