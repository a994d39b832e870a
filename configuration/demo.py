"""The demo's configuration: examples/ringfence.yaml applied as ada through `config apply`, then the
demo agent's token (tokens are never in a file). Idempotent: a second run plans no change."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User

from configuration import loading, planning
from configuration.document import Document
from core import clock
from governance import services
from governance.models import ApiToken, ServiceAccount

FILE = Path(settings.BASE_DIR) / "examples" / "ringfence.yaml"


@dataclass
class DemoResult:
    created: list[str] = field(default_factory=list)
    token_file: Path | None = None


def document() -> Document:
    return loading.load(FILE)[0]


def seed() -> DemoResult:
    result = DemoResult()
    admin = User.objects.filter(username="ada").first()
    if admin is None:
        return result  # the people of the demo are not there
    doc, source = loading.load(FILE)
    plan = planning.plan(doc, source)
    if not plan.empty:
        planning.apply(plan, actor=admin, digest=planning.sha256(FILE.read_bytes()), origin="examples/ringfence.yaml",
                       via="demo")
        result.created += [change.label for change in plan.changes if change.op == "create"]
    account = ServiceAccount.objects.filter(name="demo-agent").first()
    if account is None:
        return result
    token_file = settings.VAR_DIR / "demo-agent-token"
    existing = token_file.read_text().strip() if token_file.exists() else ""
    token = (ApiToken.objects.select_related("service_account").filter(digest=ApiToken.digest_of(existing)).first()
             if existing else None)
    if token is None or token.refusal_at(clock.now()) is not None:
        issued = services.issue_token(account.pk, actor=admin, label="demo")
        token_file.write_text(issued.raw + "\n")
        token_file.chmod(0o600)
        result.created.append("demo agent token")
    result.token_file = token_file
    return result
