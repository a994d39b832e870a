"""A real OpenID provider for the sign-in tests: oidc-provider-mock's Flask app served by werkzeug on a free
127.0.0.1 port in a thread of the test process, and Ringfence's OIDC_* settings pointed at it.

    @pytest.fixture
    def provider(settings):
        with identity_provider(settings) as provider:
            yield provider

    provider.person("00u-alice", preferred_username="alice", groups=["payments-approvers"])
    code = provider.authorize("00u-alice", client_id="ringfence", nonce="n")   # without a browser
    tokens = provider.tokens(code, client_id="ringfence")

The provider accepts any client id and secret and any redirect URI; it signs ID tokens with RS256 and
publishes its key at /jwks, discovery at /.well-known/openid-configuration.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlencode, urlparse

import oidc_provider_mock
from werkzeug.serving import make_server

from governance import oidc

CLIENT_SECRET = "client-secret-for-the-tests"
REDIRECT_URI = "http://127.0.0.1:9/oidc/callback/"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Provider:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def person(self, subject: str, **claims: object) -> None:
        """The claims the provider vouches for when `subject` is authorized (PUT /users/{sub})."""
        request = urllib.request.Request(f"{self.issuer}/users/{subject}", data=json.dumps(claims).encode(),
                                         method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204

    def authorize(self, subject: str, *, client_id: str, nonce: str, scope: str = "openid email profile") -> str:
        """What a browser does on the provider's form: authorize `subject`; returns the authorization code."""
        query = urlencode({"client_id": client_id, "redirect_uri": REDIRECT_URI, "response_type": "code",
                           "scope": scope, "nonce": nonce, "state": "s"})
        request = urllib.request.Request(f"{self.issuer}/oauth2/authorize?{query}",
                                         data=urlencode({"sub": subject}).encode(), method="POST")
        try:
            urllib.request.build_opener(_NoRedirects).open(request, timeout=5)
        except urllib.error.HTTPError as answer:
            assert answer.code == 302, answer.read()
            return parse_qs(urlparse(answer.headers["Location"]).query)["code"][0]
        raise AssertionError("the provider did not redirect back with a code")

    def tokens(self, code: str, *, client_id: str) -> dict:
        """The token endpoint's answer for `code` (id_token, access_token)."""
        basic = base64.b64encode(f"{client_id}:{CLIENT_SECRET}".encode()).decode()
        request = urllib.request.Request(
            f"{self.issuer}/oauth2/token", method="POST", headers={"Authorization": f"Basic {basic}"},
            data=urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


@contextmanager
def identity_provider(settings, *, name: str = "Okta", client_id: str = "ringfence") -> Iterator[Provider]:
    server = make_server("127.0.0.1", 0, oidc_provider_mock.app(require_nonce=True), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_port}"
    settings.OIDC_ISSUER, settings.OIDC_PROVIDER_NAME = issuer, name
    settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET = client_id, CLIENT_SECRET
    oidc.forget_discovery()
    try:
        yield Provider(issuer)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        oidc.forget_discovery()
