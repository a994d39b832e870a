"""The identity provider's settings are checked at start-up, each refusal naming the variable: a provider over
plain http elsewhere than this host, a client without its secret, scopes without openid, and password sign-in
turned off with no provider to sign in with."""

from __future__ import annotations

import pytest

from tests.governance.support import manage, production_env

OKTA = {"OIDC_ISSUER": "https://acme.okta.com/oauth2/default", "OIDC_CLIENT_ID": "0oa-ringfence",
        "OIDC_CLIENT_SECRET": "client-secret"}


@pytest.mark.parametrize("overrides, message", [
    ({**OKTA, "OIDC_ISSUER": "http://acme.okta.com"}, "OIDC_ISSUER='http://acme.okta.com' must start with https://"),
    ({**OKTA, "OIDC_CLIENT_SECRET": ""}, "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set with OIDC_ISSUER"),
    ({**OKTA, "OIDC_SCOPES": "email profile"}, "OIDC_SCOPES='email profile' must include openid"),
    ({"LOCAL_LOGIN": "false"}, "LOCAL_LOGIN=false needs OIDC_ISSUER"),
    ({**OKTA, "LOCAL_LOGIN": "perhaps"}, "LOCAL_LOGIN='perhaps' is not a boolean"),
])
def test_a_wrong_identity_provider_setting_stops_start_up_naming_it(tmp_path, overrides, message):
    result = manage(production_env(tmp_path, **overrides), "check")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_a_provider_with_password_sign_in_off_starts(tmp_path):
    result = manage(production_env(tmp_path, **OKTA, LOCAL_LOGIN="false", OIDC_PROVIDER_NAME="Okta"), "check")
    assert result.returncode == 0, result.stderr[-2000:]
