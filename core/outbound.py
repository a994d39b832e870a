"""Outbound requests: the one guarded way Ringfence POSTs to an address someone else chose.

Three senders use it: the webhook executor (rollouts/executors.py, the plan's URL, typed by a release
manager), the notification webhook (approvals/notifications.py, APPROVALS_WEBHOOK_URL) and agents'
callbacks (approvals/callbacks.py, the `callback_url` of a dispatch). Such a URL must not make a
worker reach what only the worker can reach: the cloud's metadata service, a database on the private
network, the machine itself. So `post`:

- sends only http:// and https://;
- resolves the host once and refuses it when any address it resolves to is loopback, link-local,
  private (RFC 1918, fc00::/7), shared (100.64.0.0/10), multicast, unspecified or otherwise reserved,
  or the IPv4-mapped (or NAT64) form of one, unless that address is inside WEBHOOK_ALLOWED_NETWORKS;
- connects to exactly the address it checked (no second lookup that a rebinding DNS answer could
  change), with the URL's host in the Host header and, for https, in SNI and the certificate check;
- never follows a redirect: a 3xx is returned as it came and the callers record it as a failure;
- reads no response body: callers get the status and the time it took, nothing a receiver wrote.

It connects directly, never through an HTTP proxy (a proxy would resolve the name itself).

`get` is the same guard for reading: the metric providers (rollouts/providers.py) GET a Prometheus,
Datadog or any JSON endpoint named in ringfence.yaml. It reads the body, at most `max_bytes` of it,
within `timeout` for the whole exchange, and follows no redirect either.

A refusal raises `Refused`, whose message names the address and what it is ("webhook target
127.0.0.1 is a loopback address; allow it with WEBHOOK_ALLOWED_NETWORKS") and never the URL's path,
query or credentials. A header http.client will not send (a value with CR or LF) is refused in fixed
words too: http.client's own message quotes the value, which may be a secret. `target_problem` is
the same check before a URL is saved (the plan editor, ringfence.yaml, a dispatch's callback_url):
the scheme, the host, and an address written literally; a name is checked when it is sent to, since
what it resolves to can change.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import SplitResult, quote, urlsplit

from django.conf import settings

from core import envparse
from core.envparse import parse_networks

SETTING = "WEBHOOK_ALLOWED_NETWORKS"
PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Target = tuple[int, tuple]  # (address family, socket address) of one checked address

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# The shorthand IPv4 forms a resolver reads as addresses: 127.1, 0x7f000001, 2130706433.
_IPV4_SHORTHAND = re.compile(r"[0-9a-fA-FxX.]*[0-9][0-9a-fA-FxX.]*")
# Characters a request target keeps as written; anything else (non-ASCII) is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%?"


class Refused(Exception):
    """Nothing was sent; the message says why, for the attempt record and the page."""


BAD_HEADER = "a request header is not valid (a name or value holds a control character); nothing was sent"


def _request(connection: http.client.HTTPConnection, method: str, path: str, **kwargs: object) -> None:
    """`connection.request`, with http.client's ValueError (whose text quotes the header) in fixed words.
    A TLS certificate that does not verify is a ValueError too, and an OSError: it stays what it is."""
    try:
        connection.request(method, path, **kwargs)  # type: ignore[arg-type]
    except OSError:
        raise
    except ValueError:
        raise Refused(BAD_HEADER) from None


@dataclass(frozen=True)
class Answer:
    status: int
    elapsed_ms: int


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    elapsed_ms: int


# -- the allow-list -------------------------------------------------------------------------------

def env_networks(name: str) -> list[str]:
    """The allow-list from the environment as text, parsed strictly (a malformed item stops start-up
    naming the variable)."""
    return [str(net) for net in envparse.env_networks(name)]


@lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(SETTING, values)


def allowed_networks() -> tuple[Network, ...]:
    return _networks(tuple(str(value) for value in getattr(settings, SETTING, ())))


# -- what an address is ---------------------------------------------------------------------------

def _embedded_ipv4(ip: Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one stands for, as the connection would reach it, and how."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    return None


def _kind(ip: Address) -> str | None:
    """Which kind of address `ip` is that Ringfence does not send to, or None for a global one."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if ip.is_reserved or not ip.is_global or getattr(ip, "is_site_local", False):
        return "reserved"
    return None


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiouAEIOU' else 'a'} {words}"


def describe(ip: Address) -> str | None:
    """What `ip` is when Ringfence does not send to it ("a loopback address", "an IPv4-mapped
    link-local address", …), or None."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner, how = embedded
        kind = _kind(inner)
        return _a(f"{how} {kind} address") if kind else None
    kind = _kind(ip)
    return _a(f"{kind} address") if kind else None


def _allowed(ip: Address, networks: tuple[Network, ...]) -> bool:
    embedded = _embedded_ipv4(ip)
    candidates = (ip, embedded[0]) if embedded else (ip,)
    return any(candidate in net for candidate in candidates for net in networks)


def address_problem(ip: Address, *, host: str, label: str = "webhook target") -> str | None:
    """Why Ringfence does not send to `ip` (what `host` is or resolves to), or None."""
    what = describe(ip)
    if what is None or _allowed(ip, allowed_networks()):
        return None
    shown = f"{host} is {what}" if _literal(host) == ip else f"{host} resolves to {ip}, {what}"
    return f"{label} {shown}; allow it with {SETTING}"


def _literal(host: str) -> Address | None:
    """The address a host written as one stands for (including IPv4 shorthand), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _IPV4_SHORTHAND.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


# -- checking a URL -------------------------------------------------------------------------------

def _split(url: str, label: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, its host as sent (IDNA) and its port; Refused when it cannot be sent to."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Refused(f"{label} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in PORTS:
        used = f"uses {scheme}://" if scheme else "has no scheme"
        raise Refused(f"{label} {used}; only http:// and https:// are sent")
    host = parts.hostname or ""
    if not host:
        raise Refused(f"{label} has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise Refused(f"{label} has a host name that is not valid") from None
    return parts, host, port or PORTS[scheme]


def target_problem(url: str, *, label: str = "webhook target") -> str | None:
    """What a form or a configuration file says of `url` before it is saved, or None: a scheme
    other than http(s), no host, or an address written in the URL that Ringfence does not send to.
    A name is checked each time it is sent to."""
    try:
        _, host, _ = _split(url, label)
    except Refused as refusal:
        return str(refusal)
    ip = _literal(host)
    return address_problem(ip, host=host, label=label) if ip is not None else None


def _resolve(host: str, port: int, label: str) -> list[Target]:
    """Every address `host` resolves to, each checked; Refused when any is not allowed."""
    targets: list[Target] = []
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:  # a label longer than DNS allows
        raise Refused(f"{label} has a host name that is not valid") from None
    for family, _, _, _, sockaddr in found:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        problem = address_problem(ipaddress.ip_address(sockaddr[0]), host=host, label=label)
        if problem is not None:
            raise Refused(problem)
        if (family, sockaddr) not in targets:
            targets.append((family, sockaddr))
    if not targets:
        raise ConnectionError(f"{host} has no IPv4 or IPv6 address")
    return targets


# -- sending --------------------------------------------------------------------------------------

def _open(targets: list[Target], timeout: float) -> socket.socket:
    """A connection to the first checked address that answers (in the resolver's order)."""
    error: OSError = ConnectionError("no address to connect to")
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the addresses that were checked, never to what the name resolves to by then."""

    def __init__(self, host: str, port: int, targets: list[Target], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._targets = targets

    def connect(self) -> None:
        self.sock = _open(self._targets, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The same over TLS; the URL's host is the SNI name and the name the certificate must carry."""

    def __init__(self, host: str, port: int, targets: list[Target], timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._targets = targets

    def connect(self) -> None:
        sock = _open(self._targets, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _connection(url: str, label: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection pinned to the checked addresses of the URL's host, and the request target."""
    parts, host, port = _split(url, label)
    targets = _resolve(host, port, label)
    pinned = _PinnedHTTPS if parts.scheme.lower() == "https" else _PinnedHTTP
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_PATH_SAFE)
    return pinned(host, port, targets, timeout), path


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
         label: str = "webhook target") -> Answer:
    """POST `body` to `url` once, guarded as the module says. Returns the status (any, 3xx included)
    and how long it took; raises Refused (nothing was sent, a header that cannot be sent too),
    TimeoutError, or OSError for every other failure to get an HTTP answer. `label` names the target
    in a refusal ("callback target")."""
    started = time.monotonic()
    connection, path = _connection(url, label, timeout)
    try:
        _request(connection, "POST", path, body=body, headers={**headers, "Connection": "close"})
        status = connection.getresponse().status  # the body is never read
    except http.client.HTTPException as exc:  # a malformed answer: as good as none
        raise ConnectionError(f"no valid HTTP answer ({type(exc).__name__})") from None
    finally:
        connection.close()
    return Answer(status, round((time.monotonic() - started) * 1000))


def get(url: str, headers: Mapping[str, str], *, timeout: float, label: str = "metric provider",
        max_bytes: int = 1_048_576) -> Reply:
    """GET `url` once, guarded as `post` is, and read its body. Raises Refused (nothing was sent),
    TimeoutError when the whole exchange took longer than `timeout`, ValueError when the body is
    longer than `max_bytes`, or OSError for every other failure to get an HTTP answer."""
    started = time.monotonic()
    deadline = started + timeout
    connection, path = _connection(url, label, timeout)
    try:
        _request(connection, "GET", path, headers={**headers, "Connection": "close"})
        sock = connection.sock  # the response reads from it after the connection hands it over
        response = connection.getresponse()
        chunks, size = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole answer within {timeout:g} s")
            if sock is not None:
                sock.settimeout(left)
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"the answer is longer than {max_bytes} bytes")
            chunks.append(chunk)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"no valid HTTP answer ({type(exc).__name__})") from None
    finally:
        connection.close()
    return Reply(response.status, b"".join(chunks), round((time.monotonic() - started) * 1000))
