"""A minimal no-op Alertmanager for benchmarks: asyncio, HTTP/1.1 keep-alive, answers 200.

Run as its own process so it does not share an event loop (or the GIL) with the code
being measured::

    python bench/stub_server.py --port 0 [--record]

It prints ``PORT <n>`` on its first stdout line once it listens.

- ``POST /api/v2/alerts``: answered ``200`` with an empty body, after reading the body.
  The body is not parsed unless ``--record`` is given; then each alert's ``seq`` label is
  stored with the arrival time (``time.time()``, the wall clock shared with the producer).
- ``GET /stats``: JSON ``{"requests", "alerts", "bytes", "records": {seq: arrival_time}}``
  (``alerts`` counts ``"labels"`` keys in the bodies, without parsing them).
- ``POST /reset``: clears the counters and records.
- ``GET /-/ready``: ``200``.

Only ``Content-Length`` bodies are supported (what httpx sends for ``content=``/``json=``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class State:
    """Counters shared by every connection."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.requests = 0
        self.alerts = 0
        self.bytes = 0
        self.records: dict[str, float] = {}

    def reset(self) -> None:
        self.requests = 0
        self.alerts = 0
        self.bytes = 0
        self.records = {}


class Http(asyncio.Protocol):
    """One keep-alive connection: parse request heads and Content-Length bodies, answer."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buf = bytearray()
        self.need: int | None = None
        self.request_line = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                lines = head.split(b"\r\n")
                self.request_line = lines[0]
                self.need = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        self.need = int(value.strip())
            if len(self.buf) < self.need:
                return
            body = bytes(self.buf[: self.need])
            del self.buf[: self.need]
            self.need = None
            self.handle(self.request_line, body)

    def handle(self, request_line: bytes, body: bytes) -> None:
        assert self.transport is not None
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0]
        st = self.state
        if method == b"POST" and path == b"/api/v2/alerts":
            arrived = time.time()
            st.requests += 1
            st.bytes += len(body)
            st.alerts += body.count(b'"labels"')  # cheap: no JSON parsing
            if st.record:
                for alert in json.loads(body):
                    seq = alert.get("labels", {}).get("seq")
                    if seq is not None:
                        st.records.setdefault(seq, arrived)
            self.transport.write(OK)
        elif path == b"/stats":
            self.reply(
                {
                    "requests": st.requests,
                    "alerts": st.alerts,
                    "bytes": st.bytes,
                    "records": st.records,
                },
            )
        elif method == b"POST" and path == b"/reset":
            st.reset()
            self.transport.write(OK)
        else:
            self.transport.write(OK)

    def reply(self, obj: Any) -> None:
        assert self.transport is not None
        data = json.dumps(obj).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode()
            + b"\r\n\r\n"
            + data
        )


async def serve(host: str, port: int, record: bool) -> None:
    loop = asyncio.get_running_loop()
    state = State(record)
    server = await loop.create_server(lambda: Http(state), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--record", action="store_true", help="parse bodies and record arrival per seq label"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.record))


if __name__ == "__main__":
    main()
