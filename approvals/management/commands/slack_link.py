"""manage.py slack_link add|remove|list — which Slack user acts as which person (approvals.slack).

    slack_link add USERNAME SLACK_USER_ID [--team T0123ABCD] --by ADMIN
    slack_link remove SLACK_USER_ID [--team T0123ABCD] --by ADMIN
    slack_link list
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals import slack
from approvals.models import SlackLink
from core.errors import TransitionRefused


class Command(BaseCommand):
    help = "Link a Slack user to the Ringfence user they act as from Slack, unlink them, or list the links."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        add = sub.add_parser("add")
        add.add_argument("username", help="the Ringfence user")
        add.add_argument("slack_user_id", help="their Slack member ID (U0123ABCD, in their Slack profile)")
        remove = sub.add_parser("remove")
        remove.add_argument("slack_user_id")
        for p in (add, remove):
            p.add_argument("--team", default="", help="the Slack workspace id (T0123ABCD); default: any workspace")
            p.add_argument("--by", required=True, help="username of the administrator doing it (audited)")
        sub.add_parser("list")

    def handle(self, *args, verb: str, **options) -> None:
        if verb == "list":
            for link in SlackLink.objects.select_related("user").order_by("team_id", "slack_user_id"):
                self.stdout.write(f"{link.team_id or '*'}\t{link.slack_user_id}\t{link.user.get_username()}")
            return
        users = get_user_model().objects
        actor = users.filter(username=options["by"], is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user {options['by']!r}.")
        try:
            if verb == "add":
                user = users.filter(username=options["username"]).first()
                if user is None:
                    raise CommandError(f"No user {options['username']!r}.")
                link = slack.link_user(actor=actor, user=user, slack_user_id=options["slack_user_id"],
                                       team_id=options["team"])
                self.stdout.write(f"{link.slack_user_id} acts as {user.get_username()} from Slack.")
            else:
                slack.unlink_user(actor=actor, slack_user_id=options["slack_user_id"], team_id=options["team"])
                self.stdout.write(f"{options['slack_user_id'].strip().upper()} is no longer linked.")
        except TransitionRefused as refusal:
            raise CommandError(refusal.message) from None
