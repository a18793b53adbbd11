"""`soundtrack review`: the review page and the files its lock names, served on 127.0.0.1.

The server reads from the storage with its own access (a folder, or S3 with its credentials), so
the page holds relative links only: no credentials and no presigned links reach the browser.
Files are fetched once into a cache folder, verified against the lock's sha256, and served with
byte ranges (browsers seek audio and read its duration through them).
"""

from __future__ import annotations

import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

from soundtrack.errors import InputError, SoundtrackError, StorageError
from soundtrack.formats import FORMATS
from soundtrack.hashing import file_sha256
from soundtrack.paths import printable
from soundtrack.pictures import PICTURE_CONTENT_TYPE, PICTURE_EXT
from soundtrack.redaction import redact
from soundtrack.report import BuildReport, LockUnreadable, read_lock
from soundtrack.review import (
    ServedFile,
    content_security_policy,
    review_page,
    served_files,
)
from soundtrack.storage import Storage, soundtrack_folder

HOST = "127.0.0.1"  # never another interface: the server reads storage with its own credentials
_BLOCK_BYTES = 1 << 16
# At most 18 digits (any file's size fits): a longer number is a malformed header, ignored.
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
_CONTENT_TYPES = {
    **{ext: entry.content_type for ext, entry in FORMATS.items()},
    "flac": "audio/flac",
    PICTURE_EXT: PICTURE_CONTENT_TYPE,
    "json": "application/json",  # sidecars
}


class Unsatisfiable(ValueError):
    """A Range header that selects no byte of the file (HTTP 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range (RFC 9110 §14.1.2); None: send the whole
    file (no header, several ranges, or a malformed one, which a server may ignore)."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or not any(match.groups()):
        return None
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        if int(last) == 0:
            raise Unsatisfiable(header)
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    return start, end


class FileToSend(NamedTuple):
    """A verified local copy of a file the page links to."""

    path: Path
    content_type: str
    sha256: str  # its entity tag: a copy's bytes never change under one


class NoLock(InputError):
    """No lock for the soundtrack in the storage: never published there, or deleted since."""


class RequestError(Exception):
    """An HTTP error status with a one-line reason."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class ReviewSite:
    """One soundtrack's page and files, read from its storage."""

    storage: Storage
    soundtrack: str
    cache: Path  # fetched files, named by sha256
    _files: dict[str, ServedFile] = field(default_factory=dict)
    _loaded: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _fetching: dict[str, threading.Lock] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """The key prefix of the lock's folder, where the page lies (ending in '/')."""
        return soundtrack_folder(self.storage, self.soundtrack)

    def load(self) -> BuildReport:
        """The lock as it is now; what it names becomes what may be served."""
        try:
            report = read_lock(self.storage, self.soundtrack)
        except LockUnreadable as exc:
            raise LockUnreadable(
                f"the lock of {self.soundtrack!r} in {self.storage.url} is unreadable: {exc}"
            ) from None
        if report is None:
            with self._guard:  # nothing is served that no lock names
                self._files, self._loaded = {}, True
            raise NoLock(
                f"no lock for soundtrack {self.soundtrack!r} in {self.storage.url}: "
                "nothing was published there under that name"
            )
        files = served_files(report)
        with self._guard:
            self._files, self._loaded = files, True
        return report

    def page(self) -> bytes:
        """The review page of the current lock."""
        return review_page(self.load(), folder=self.folder).encode()

    def file(self, relative: str) -> FileToSend:
        """The cached, verified copy of the file at `relative` (below the page); RequestError
        unless the lock names it."""
        if not self._loaded:
            self.load()
        with self._guard:
            served = self._files.get(self.folder + relative)
            if served is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"{relative} is not in the lock")
            fetching = self._fetching.setdefault(served.sha256, threading.Lock())
        path = self.cache / served.sha256
        with fetching:  # one download per file, however many range requests ask at once
            if not path.is_file():
                self.storage.fetch(served.key, path, sha256=served.sha256)
        return FileToSend(path, _content_type(served.key), served.sha256)


@dataclass
class CandidateSite:
    """The takes waiting for a reviewer: their page, and their files where they are staged."""

    report: BuildReport  # keys are paths below `staging` (approval.candidates_report)
    staging: Path
    _files: dict[str, ServedFile] = field(init=False)
    # (mtime, size) of each file when it last matched its sha256
    _checked: dict[str, tuple[int, int]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._files = served_files(self.report)

    def page(self) -> bytes:
        return review_page(self.report, folder="").encode()

    def file(self, relative: str) -> FileToSend:
        served = self._files.get(relative)
        if served is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"{relative} is not a candidate's file")
        path = self.staging / served.key
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise RequestError(
                HTTPStatus.NOT_FOUND, f"{relative} is no longer staged (the build moved on)"
            ) from None
        seen = (stat.st_mtime_ns, stat.st_size)
        with self._guard:  # hashed again only when it changed, not on every range request
            if self._checked.get(served.key) != seen:
                if file_sha256(path) != served.sha256:
                    raise RequestError(
                        HTTPStatus.BAD_GATEWAY, f"{relative} changed since it was judged"
                    )
                self._checked[served.key] = seen
        return FileToSend(path, _content_type(served.key), served.sha256)


def _content_type(key: str) -> str:
    return _CONTENT_TYPES.get(key.rpartition(".")[2], "application/octet-stream")


class Site(Protocol):
    """A page and the files it links to (a published soundtrack, or candidates)."""

    def page(self) -> bytes: ...

    def file(self, relative: str) -> FileToSend: ...


def relative_path(target: str) -> str:
    """The path below the page a request names ('' for the page); RequestError(400) for one
    that could leave the folder ('..', '.', empty segments, backslashes, NUL)."""
    # Not urlsplit: it would read '//host/...' as a host name, not as an empty segment.
    path = unquote(target.partition("?")[0].partition("#")[0]).removeprefix("/")
    if path in ("", "review.html"):
        return ""
    segments = path.split("/")
    if "\\" in path or "\x00" in path or any(s in ("", ".", "..") for s in segments):
        raise RequestError(HTTPStatus.BAD_REQUEST, "a path inside the soundtrack's folder only")
    return path


def _names(if_none_match: str, etag: str) -> bool:
    """Whether If-None-Match headers (joined by commas) match `etag`: a list of tags, weak ones
    compared weakly as RFC 9110 §13.1.2 asks, or `*`."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def allowed_host(host: str | None, port: int) -> bool:
    """Whether a request's Host header names this server as a browser on this machine would."""
    names = (HOST, "localhost")
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:
        allowed.update(names)  # HTTP's default port is left out of Host
    return (host or "").lower() in allowed


def make_server(site: Site, port: int) -> ThreadingHTTPServer:
    """A server for `site` bound to 127.0.0.1:`port` (0: a free port), not yet serving."""

    class Handler(_Handler):
        review = site

    server = _Server((HOST, port), Handler)
    Handler.review_port = server.server_port
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A browser drops requests it no longer needs (seeking, a closed tab), while they are
        # read, answered or refused, or stops reading one for a minute (a paused player): not
        # an error, and no traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    review: Site
    review_port: int
    protocol_version = "HTTP/1.1"  # keep-alive: a player's range requests reuse one connection
    server_version = "soundtrack-review"
    # A connection silent this long is closed: each open one holds a thread.
    timeout = 60.0

    def version_string(self) -> str:
        return self.server_version  # not Python's version beside it

    def end_headers(self) -> None:
        # Every answer (http.server's own refusals too): read as the type it says, and usable by
        # this page alone: another site's page could otherwise play the files in its own <audio>.
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        try:
            self._check_host()
            relative = relative_path(self.path)
            if relative:
                self._send_file(self.review.file(relative), body=body)
            else:
                self._send_page(self.review.page(), body=body)
        except RequestError as exc:
            self._send_error(exc.status, str(exc), body=body)
        except StorageError as exc:
            self._send_error(HTTPStatus.BAD_GATEWAY, redact(str(exc)), body=body)
        except NoLock as exc:  # deleted since the server started
            self._send_error(HTTPStatus.NOT_FOUND, redact(str(exc)), body=body)
        except SoundtrackError as exc:
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, redact(str(exc)), body=body)

    def _check_host(self) -> None:
        # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) would send its
        # own host name: refused, so no other site can read the storage through this server.
        if not allowed_host(self.headers.get("Host"), self.review_port):
            raise RequestError(HTTPStatus.FORBIDDEN, "serves 127.0.0.1 and localhost only")

    def _send_page(self, page: bytes, *, body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", content_security_policy())
        self.end_headers()
        if body:
            self.wfile.write(page)

    def _send_file(self, file: FileToSend, *, body: bool) -> None:
        etag = f'"{file.sha256}"'
        if _names(", ".join(self.headers.get_all("If-None-Match", [])), etag):
            self.send_response(HTTPStatus.NOT_MODIFIED)  # a browser's copy is still this one
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", "no-cache")  # as the whole file's answer says
            self.end_headers()
            return
        size = file.path.stat().st_size
        # A range of another version of the file (If-Range names an older tag, or a date,
        # which no copy here carries) would splice two versions: the whole file instead.
        if_range = self.headers.get("If-Range")
        fresh = if_range is None or if_range.strip() == etag
        ranges = self.headers.get("Range") if fresh else None
        try:
            wanted = byte_range(ranges, size)
        except Unsatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = wanted or (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        if wanted:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Type", file.content_type)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not body:
            return
        with file.path.open("rb") as source:
            source.seek(first)
            left = last - first + 1
            while left > 0:
                block = source.read(min(_BLOCK_BYTES, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)

    def _send_error(self, status: HTTPStatus, reason: str, *, body: bool) -> None:
        text = f"{status.value} {status.phrase}: {reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Successful requests are many (every seek is one); only refusals are worth a line.
        if isinstance(code, int) and code >= 400:
            # Both come from the request line as sent: a terminal must not run what they hold.
            # A line too malformed to parse sets neither.
            command, path = getattr(self, "command", None) or "", getattr(self, "path", "")
            sys.stderr.write(f"{printable(command)} {printable(path)}: {code}\n")

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default per-request log (log_request prints what matters)."""
