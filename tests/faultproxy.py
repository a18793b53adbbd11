"""A loopback HTTP proxy that injects S3 faults: 503 SlowDown replies and dropped connections.

Each request travels on its own connection (the proxy asks both sides for `Connection: close`).
Its fate is drawn from a generator seeded with (seed, method, path, partNumber, attempt), so a
run is reproducible whatever the thread timing, and at most `max_faults_per_request` attempts
of one request fail, so a client that retries a few times always gets through.
"""

from __future__ import annotations

import random
import select
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>faultproxy</RequestId></Error>"
)
_HEAD_LIMIT_BYTES = 64 * 1024
_IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it (header names lower-cased)."""

    method: str
    path: str
    query: str
    fate: str
    headers: dict[str, str]


class FaultProxy:
    """Forward to 127.0.0.1:`upstream_port`, failing a seeded share of requests.

    Fates: `slowdown` (answer 503 SlowDown without forwarding), `drop` (close the connection
    without an answer, before forwarding), `lost_response` (forward, then close instead of
    relaying the answer: the server did the work but the client never hears of it), `corrupt`
    (forward with one byte of the request body flipped, as a bad network card would).
    `stats` counts requests and each fate; `requests` lists what was seen, in order;
    `before_forward` is called with each request about to be forwarded (to stage races).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 0,
        slowdown_share: float = 0.0,
        drop_share: float = 0.0,
        lost_response_share: float = 0.0,
        corrupt_share: float = 0.0,
        max_faults_per_request: int = 2,
        before_forward: Callable[[Seen], None] | None = None,
    ) -> None:
        if slowdown_share + drop_share + lost_response_share + corrupt_share > 1.0:
            raise ValueError("fault shares add up to more than 1")
        self.upstream_port = upstream_port
        self.seed = seed
        self.shares = (
            ("slowdown", slowdown_share),
            ("drop", drop_share),
            ("lost_response", lost_response_share),
            ("corrupt", corrupt_share),
        )
        self.max_faults_per_request = max_faults_per_request
        self.before_forward = before_forward
        self.stats: Counter[str] = Counter()
        self.requests: list[Seen] = []
        self._attempts: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _fate(self, method: str, target: str, headers: dict[str, str]) -> Seen:
        parts = urlsplit(target)
        part_number = parse_qs(parts.query).get("partNumber", [""])[0]
        request = f"{method} {parts.path} {part_number}"
        with self._lock:
            attempt = self._attempts[request]
            self._attempts[request] += 1
            draw = random.Random(f"{self.seed}|{request}|{attempt}").random()
            fate = "forward"
            if self._faults[request] < self.max_faults_per_request:
                edge = 0.0
                for name, share in self.shares:
                    edge += share
                    if draw < edge:
                        fate = name
                        break
            if fate != "forward":
                self._faults[request] += 1
            self.stats["requests"] += 1
            self.stats[fate] += 1
            seen = Seen(method, parts.path, parts.query, fate, headers)
            self.requests.append(seen)
            return seen

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(_IDLE_TIMEOUT_S)
        head, rest = _read_head(client)
        if head is None:
            return
        request_line, _, header_block = head.partition(b"\r\n")
        method, target, _version = request_line.decode("latin-1").split(" ", 2)
        headers = _parse_headers(header_block)
        seen = self._fate(method, target, headers)
        fate = seen.fate
        if fate == "drop":
            return  # closing without a reply: the client sees the connection die
        if fate == "slowdown":
            if headers.get("expect", "").lower() != "100-continue":
                _drain(client, int(headers.get("content-length", "0")) - len(rest))
            body = b"" if method == "HEAD" else SLOWDOWN_BODY
            client.sendall(
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                + f"Content-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            return
        if self.before_forward is not None:
            self.before_forward(seen)
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as upstream:
            upstream.settimeout(_IDLE_TIMEOUT_S)
            corrupt = fate == "corrupt"
            if corrupt and rest:
                rest, corrupt = _flip_first_byte(rest), False
            upstream.sendall(_with_connection_close(head) + rest)
            _pipe(client, upstream, relay_response=fate != "lost_response", corrupt=corrupt)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > _HEAD_LIMIT_BYTES:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _with_connection_close(head: bytes) -> bytes:
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _drain(sock: socket.socket, remaining: int) -> None:
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            return
        remaining -= len(chunk)


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _pipe(
    client: socket.socket, upstream: socket.socket, *, relay_response: bool, corrupt: bool
) -> None:
    """Copy both ways until the server closes; without `relay_response` its answer is dropped;
    with `corrupt` the first body byte from the client is flipped."""
    sockets = [client, upstream]
    while sockets:
        readable, _, _ = select.select(sockets, [], [], _IDLE_TIMEOUT_S)
        if not readable:
            return
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if sock is upstream:
                if not chunk:
                    return
                if relay_response:
                    client.sendall(chunk)
                elif b"\r\n" in chunk and chunk.startswith(b"HTTP/1.1 1"):
                    client.sendall(chunk)  # pass "100 Continue" so the body still arrives
            elif chunk:
                if corrupt:
                    chunk, corrupt = _flip_first_byte(chunk), False
                upstream.sendall(chunk)
            else:
                sockets.remove(client)
