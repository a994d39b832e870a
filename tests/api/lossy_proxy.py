"""A TCP proxy that forwards a request, lets the server answer, then loses the answer.

It models the retry case idempotency exists for: the server acted, the client never heard.
"""

from __future__ import annotations

import socket
import struct
import threading


class LossyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.lose_next = 0
        self.lost = 0
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="lossy-proxy", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> LossyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=30) as upstream:
            request = _read_request(client)
            upstream.sendall(request)
            upstream.shutdown(socket.SHUT_WR)
            response = b"".join(iter(lambda: upstream.recv(65536), b""))
            with self._lock:
                self.forwarded += 1
                lose = self.lose_next > 0
                if lose:
                    self.lose_next -= 1
                    self.lost += 1
            if lose:  # reset the client's connection: the answer never arrives
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            client.sendall(response)


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
