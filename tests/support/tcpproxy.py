"""A TCP proxy in the test's own event loop that can be frozen: a blackholed network path.

While frozen it still accepts connections (the SYN is answered, as by a firewall that drops
later packets or a proxy that stopped forwarding) but forwards nothing either way: bytes
read are held, not sent, and no new upstream connection is opened. Nobody sees a close or
a reset, so only a timeout can end a wait. :meth:`thaw` forwards what was held (TCP
retransmits what a healed path dropped) and opens the upstream connections held back.

    async with FreezableProxy("127.0.0.1", 5432) as proxy:
        url = ...port=proxy.port...
        proxy.freeze(); ...; proxy.thaw()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024


class FreezableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        """Connections accepted so far (while frozen too)."""

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def frozen(self) -> bool:
        return not self._open.is_set()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._track(task)
        self._writers.add(client_w)
        try:
            await self._open.wait()  # frozen: no upstream connection either
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except (OSError, asyncio.CancelledError):
            client_w.close()
            return
        self._writers.add(upstream_w)
        pumps = [
            asyncio.create_task(self._pump(client_r, upstream_w)),
            asyncio.create_task(self._pump(upstream_r, client_w)),
        ]
        for pump in pumps:
            self._track(pump)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, upstream_w):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = await reader.read(CHUNK)
                await self._open.wait()  # frozen: hold the bytes, forward nothing
                if not data:
                    return
                writer.write(data)
                await writer.drain()
