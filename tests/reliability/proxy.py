"""An in-process TCP proxy for network faults between a client and a private service.

Knobs, changeable while connections are open:
- `delay_ms`: added round-trip time; each direction holds every chunk for half of it, chunks
  keep their order and the pipe keeps streaming (a latency, not a bandwidth limit);
- `blackhole`: nothing is delivered in either direction while it is on (a partition: held data
  flows again when it is lifted, as TCP retransmission would deliver it); new connections are
  accepted but see no answer;
- `reset()`: every open connection is closed with a TCP RST.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from tests.reliability.waiting import wait_until


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_ms = 0.0
        self.blackhole = False
        self.port = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            self._server.close()
            self._abort_all()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def reset(self) -> int:
        """Close every open connection with RST; returns how many sockets were cut."""
        async def cut() -> int:
            return self._abort_all()

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(timeout=10)

    def _abort_all(self) -> int:
        writers, self._writers = list(self._writers), set()
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return len(writers)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def receive() -> None:
            try:
                while data := await reader.read(65536):
                    chunks.put_nowait((loop.time(), data))
            finally:
                chunks.put_nowait(None)

        async def send() -> None:
            while (item := await chunks.get()) is not None:
                received_at, data = item
                hold = received_at + self.delay_ms / 2000 - loop.time()
                if hold > 0:
                    await asyncio.sleep(hold)
                while self.blackhole and not writer.is_closing():
                    await asyncio.sleep(0.01)
                writer.write(data)
                await writer.drain()
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()

        await asyncio.gather(receive(), send())

    def wait_idle(self, timeout: float = 10) -> None:
        wait_until(lambda: not self._writers, timeout, "every proxied connection is closed")
