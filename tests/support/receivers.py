"""Local HTTP(S) receivers for the tests of where Ringfence sends (core.outbound): each keeps every
request it got and answers a fixed status, body and Location, on the loopback address it is given
(any of 127.0.0.0/8 on Linux, so one test can have an allowed receiver and a forbidden one), and a
resolver that answers chosen names at the socket.getaddrinfo level, counting the lookups.

    with receiving(answer=b"secret") as receiver:
        ...  receiver.url("/hook")  ...  receiver.received  ...
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# What a receiver answers in its body: a test asserts it never shows up anywhere in Ringfence.
# How every refusal of a guarded address ends: what the operator may do about it.
ALLOW_IT = "; allow it with WEBHOOK_ALLOWED_NETWORKS"
SECRET_ANSWER = b"aws_secret_access_key=wJalrXUtnFEMI-K7MDENG-receiver-said-this"


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    status: int = 200
    answer: bytes = SECRET_ANSWER
    location: str = ""
    port: int = 0
    tls: ssl.SSLContext | None = None
    received: list[dict] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # SNI of each TLS handshake
    server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook", *, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.host}:{self.server.server_address[1]}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                try:
                    self.wfile.write(receiver.answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # Ringfence hung up without reading the body, as it should

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.tls.sni_callback = lambda sock, name, context: self.server_names.append(name)
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def receiving(**options: object) -> Iterator[Receiver]:
    receiver = Receiver(**options).start()
    try:
        yield receiver
    finally:
        receiver.close()


@contextmanager
def receiving_on_the_same_port(first_host: str, second_host: str, **options: object) -> Iterator[tuple[Receiver,
                                                                                                       Receiver]]:
    """Two receivers on one port number of two loopback addresses (a name rebound from one to the
    other would reach the second)."""
    for _ in range(20):
        first = Receiver(host=first_host, **options).start()
        try:
            second = Receiver(host=second_host, port=first.server.server_address[1], **options).start()
        except OSError:  # that port is taken on the second address: try another
            first.close()
            continue
        try:
            yield first, second
        finally:
            first.close()
            second.close()
        return
    pytest.fail("no port free on both loopback addresses")


class Resolver:
    """socket.getaddrinfo answering `names` (name -> address, or a list of addresses given in turn,
    the last one repeating) and the real resolver for every other name; `lookups` counts them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: dict[str, str | list[str]]) -> None:
        self.names = {name: list(value) if isinstance(value, list) else [value] for name, value in names.items()}
        self.lookups: Counter = Counter()
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.names:
            return self._real(host, port, family, type, proto, flags)
        self.lookups[name] += 1
        answers = self.names[name]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return self._real(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def tls_for(name: str, tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context whose certificate, issued by a fresh test CA, names `name`; and the CA's
    file, for SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ringfence test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file
