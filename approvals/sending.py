"""What the outbox's channels (email, webhook, Slack, PagerDuty) share without importing the outbox."""

from __future__ import annotations


class DeliveryFailed(Exception):
    """A channel could not deliver a notice; the delivery row records why and the sweep tries again."""
