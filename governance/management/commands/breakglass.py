from __future__ import annotations

import getpass
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from core.errors import TransitionRefused
from governance import services


class Command(BaseCommand):
    help = ("Print a one-time sign-in link, valid 15 minutes, for the emergency superuser USER (created, with no "
            "password, when it does not exist): the way in when the identity provider is down and password "
            "sign-in is off. Audited (user.breakglass_issued, then user.breakglass_used).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", help="the emergency superuser's username, e.g. breakglass")
        parser.add_argument("--reason", required=True, help="why it is needed (written into the audit trail)")

    def handle(self, *args, username: str, reason: str, **options) -> None:
        try:
            operator = getpass.getuser()
        except (KeyError, OSError):
            operator = "unknown"
        try:
            link, raw = services.issue_breakglass_link(username=username, reason=reason,
                                                       issued_by=f"{operator}@{socket.gethostname()}")
        except TransitionRefused as refusal:
            raise CommandError(refusal.message) from None
        self.stdout.write(f"{settings.SITE_URL}{reverse('break_glass', args=[raw])}")
        self.stdout.write(f"one sign-in as {username}, until {link.expires_at:%Y-%m-%d %H:%M} UTC")
