from __future__ import annotations

from django.urls import reverse

from audit.models import AuditEvent
from governance.permissions import Role
from rollouts.models import ActionReview
from tests import factories

REVIEWS = reverse("rollouts:reviews")


def test_containment_owner_reviews_an_autonomous_rollback(client, containment_owner, story):
    client.force_login(containment_owner)
    page = client.get(REVIEWS).content.decode()
    assert f'id="review-{story.review.pk}"' in page and "latency_p95_ms &gt; 800 sustained for 2 min" in page
    url = reverse("rollouts:review", args=[story.review.pk])
    before = AuditEvent.objects.count()

    refused = client.post(url, {"verdict": "false_positive", "reason": ""}, headers={"HX-Request": "true"})
    assert refused.status_code == 422 and "Say why it was a false positive" in refused.content.decode()
    assert ActionReview.objects.get(pk=story.review.pk).is_pending and AuditEvent.objects.count() == before

    done = client.post(url, {"verdict": "false_positive", "reason": "noise", "note": "one slow batch"},
                       headers={"HX-Request": "true"})
    assert (done.status_code == 200 and "False positive" in done.content.decode()
            and "<form" not in done.content.decode())
    review = ActionReview.objects.get(pk=story.review.pk)
    assert (review.verdict, review.reason, review.reviewed_by) == ("false_positive", "noise", containment_owner)
    event = AuditEvent.objects.get(seq=before + 1)
    assert event.action == "rollout.action_reviewed" and event.data["verdict"] == "false_positive"
    assert event.reason == "one slow batch" and event.actor_label == containment_owner.username

    again = client.post(url, {"verdict": "correct"})
    assert again.status_code == 409 and AuditEvent.objects.count() == before + 1
    assert "Nothing waits for your review." in client.get(REVIEWS).content.decode()


def test_only_owners_of_the_workflow_review_its_actions(client, story, auditor, workflow, manager):
    bystander = factories.make_user("oscar", role=Role.CONTAINMENT_OWNER)
    factories.scope(bystander, workflow)  # in scope, but holds none of its duties
    url = reverse("rollouts:review", args=[story.review.pk])
    for person, refused_with in ((bystander, 403), (auditor, 403), (manager, 403)):
        client.force_login(person)
        assert f'id="review-{story.review.pk}"' not in client.get(REVIEWS).content.decode()
        assert client.post(url, {"verdict": "correct"}).status_code == refused_with
    outsider = factories.make_user("otto", role=Role.CONTAINMENT_OWNER)
    client.force_login(outsider)
    assert client.post(url, {"verdict": "correct"}).status_code == 404
    assert ActionReview.objects.get(pk=story.review.pk).is_pending
