from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.errors import TransitionRefused
from governance import services
from governance.models import ApiToken


class Command(BaseCommand):
    help = ("Rotate an API token: print its successor (shown once) and end the old token after the overlap, "
            "so the agent switches without a gap. Audited as the administrator named by --by.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("prefix", help="the token's prefix, as the service accounts page shows it (rf_…)")
        parser.add_argument("--by", required=True, help="username of the administrator rotating it")
        parser.add_argument("--overlap-hours", type=float, default=None,
                            help="how long the old token keeps working (default API_TOKEN_ROTATION_OVERLAP_HOURS)")

    def handle(self, *args, prefix: str, by: str, overlap_hours: float | None, **options) -> None:
        actor = get_user_model().objects.filter(username=by, is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user {by!r}.")
        tokens = list(ApiToken.objects.filter(prefix=prefix.rstrip("…")[:12], revoked_at__isnull=True,
                                              replaced_by__isnull=True))
        if len(tokens) != 1:
            raise CommandError(f"{len(tokens)} usable token(s) have the prefix {prefix!r}; give the whole prefix.")
        overlap = None if overlap_hours is None else timedelta(hours=overlap_hours)
        try:
            issued = services.rotate_token(tokens[0].pk, actor=actor, overlap=overlap)
        except TransitionRefused as refusal:
            raise CommandError(refusal.message) from None
        old = ApiToken.objects.get(pk=tokens[0].pk)
        self.stdout.write(f"new token (shown once): {issued.raw}")
        self.stdout.write(f"it ends {issued.token.expires_at:%Y-%m-%d %H:%M} UTC; "
                          f"the old one ({old.prefix}…) ends {old.expires_at:%Y-%m-%d %H:%M} UTC")
