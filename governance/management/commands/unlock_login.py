from __future__ import annotations

import ipaddress

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.errors import TransitionRefused
from governance import services


class Command(BaseCommand):
    help = ("Lift a sign-in lockout before its cool-off ends: forget the failed sign-ins counted against an account "
            "(a username, from any address) or an address (an IP, for any account). Audited as the administrator "
            "named by --by.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("target", help="the username, or the IP address, that is locked out")
        parser.add_argument("--by", required=True, help="username of the administrator lifting it")

    def handle(self, *args, target: str, by: str, **options) -> None:
        actor = get_user_model().objects.filter(username=by, is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user {by!r}.")
        try:
            ipaddress.ip_address(target)
            key = {"ip_address": target}
        except ValueError:
            key = {"username": target}
        try:
            forgotten = services.unlock_login(actor=actor, **key)
        except TransitionRefused as refusal:
            raise CommandError(refusal.message) from None
        self.stdout.write(f"{target}: {forgotten} failed sign-in{'s' if forgotten != 1 else ''} forgotten; "
                          "it may sign in again.")
