"""core.outbound's judgement of addresses and of its setting, the part every sender shares."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ImproperlyConfigured

from core import outbound


@pytest.mark.parametrize(("address", "what"), [
    ("127.0.0.1", "a loopback address"), ("127.255.0.9", "a loopback address"), ("::1", "a loopback address"),
    ("169.254.169.254", "a link-local address"), ("fe80::1", "a link-local address"),
    ("10.0.0.1", "a private address"), ("172.31.255.255", "a private address"), ("192.168.0.1", "a private address"),
    ("fd12:3456::1", "a private address"), ("100.64.0.1", "a shared address"), ("224.0.0.251", "a multicast address"),
    ("ff02::1", "a multicast address"), ("0.0.0.0", "an unspecified address"), ("::", "an unspecified address"),
    ("240.0.0.1", "a reserved address"), ("255.255.255.255", "a reserved address"),
    ("192.0.2.10", "a reserved address"), ("2001:db8::1", "a reserved address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped loopback address"), ("::ffff:169.254.169.254", "an IPv4-mapped link-local "
                                                                                        "address"),
    ("64:ff9b::a9fe:a9fe", "a NAT64 link-local address"),
    ("93.184.215.14", None), ("2606:4700::6810:84e5", None), ("::ffff:93.184.215.14", None),
])
def test_each_kind_of_address_is_named(address, what):
    assert outbound.describe(ipaddress.ip_address(address)) == what


def test_the_allow_list_admits_its_networks_and_their_ipv4_mapped_forms(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16", "fd00:1::/64"]
    for allowed in ("10.20.3.4", "::ffff:10.20.3.4", "fd00:1::5"):
        assert outbound.address_problem(ipaddress.ip_address(allowed), host=allowed) is None, allowed
    assert outbound.address_problem(ipaddress.ip_address("10.21.0.1"), host="hooks.example.com") == (
        "webhook target hooks.example.com resolves to 10.21.0.1, a private address; "
        "allow it with WEBHOOK_ALLOWED_NETWORKS")


@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/x?token=abc", None),
    ("http://localhost:8080/", None),  # a name: checked when sent
    ("gopher://hooks.example.com/", "webhook target uses gopher://; only http:// and https:// are sent"),
    ("hooks.example.com/x", "webhook target has no scheme; only http:// and https:// are sent"),
    ("http:///x", "webhook target has no host"),
    ("http://hooks.example.com:99999/", "webhook target is not a valid URL"),
    ("http://user:pw@127.0.0.1/x?token=abc",
     "webhook target 127.0.0.1 is a loopback address; allow it with WEBHOOK_ALLOWED_NETWORKS"),
])
def test_a_url_is_judged_before_it_is_saved_without_repeating_its_path_query_or_credentials(settings, url, problem):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    assert outbound.target_problem(url) == problem


def test_a_refused_target_raises_before_anything_is_sent(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    with pytest.raises(outbound.Refused, match=r"^callback target 169\.254\.169\.254 is a link-local address"):
        outbound.post("http://169.254.169.254/latest/", b"{}", {}, timeout=0.5, label="callback target")


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "10.0.0.1/8", "not-a-network", "10.0.0.0/8,,fd00::/8"])
def test_a_malformed_allow_list_stops_start_up_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", raw)
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_NETWORKS"):
        outbound.env_networks("WEBHOOK_ALLOWED_NETWORKS")


def test_a_well_formed_allow_list_is_read_as_networks(monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", " 127.0.0.0/8, ::1/128 ,10.1.2.3")
    assert outbound.env_networks("WEBHOOK_ALLOWED_NETWORKS") == ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]
