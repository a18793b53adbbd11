"""The review page and its server, without a browser: hostile values stay text, the page holds
no credentials or links but relative ones, and the server sends only what the lock names."""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.gates import GateResult
from soundtrack.report import BuildReport, FileRecord, ModelInfo, PictureRecord, TrackRecord
from soundtrack.review import review_page
from soundtrack.review_server import (
    CandidateSite,
    RequestError,
    ReviewSite,
    Unsatisfiable,
    allowed_host,
    byte_range,
    make_server,
)
from soundtrack.storage import LocalStorage, Storage, open_storage
from tests.running import SOUNDTRACK as CLI
from tests.specs import make_file

if TYPE_CHECKING:
    from tests.s3server import SeaweedServer

SOUNDTRACK = "sky"
HOSTILE_ID = '"><img src=x onerror=alert(1)>'
HOSTILE_PROMPT = "</script><script>alert('prompt')</script><!--"
SIGNED = "https://bucket.example/sky/loop.ogg?X-Amz-Signature=deadbeefsecret"


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>, as a browser's
    parser reads them (the standard library's parser, not the page's own code)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parsed(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def record(key: str, data: bytes, fmt: str, **extra: object) -> FileRecord:
    return make_file(key, data, format=fmt, uri=f"s3://bucket/{key}", duration_s=4.0, **extra)


def report_of(tracks: list[TrackRecord]) -> BuildReport:
    return BuildReport(soundtrack=SOUNDTRACK, storage="s3://bucket/games", tracks=tracks)


def test_hostile_ids_prompts_and_reasons_stay_text() -> None:
    track = TrackRecord(
        id=HOSTILE_ID,
        status="rejected",
        spec_hash="abc",
        prompt=HOSTILE_PROMPT,
        reason="<b>loud</b> & clipped",
        analysis={"<i>key</i>": "<u>C major</u>"},
        model=ModelInfo(id="m<script>", revision="r", license="<a href=x>MIT</a>"),
        # A lock's gates are read back from storage, which anyone with write access may edit.
        gates=[GateResult("<i>lead</i>", 1.0, "<img src=x onerror=alert(1)>", False, "fail")],
    )
    page = review_page(report_of([track]), folder="games/sky/")
    elements = parsed(page)

    assert [t for t, _ in elements.tags if t in ("img", "b", "i", "u", "a")] == []
    assert [a for t, a in elements.tags if t == "script"] == [
        {"type": "application/json", "id": "review-data"},
        {},
    ], "our two script elements, no injected one"
    for text in (
        HOSTILE_ID,
        HOSTILE_PROMPT,
        "<b>loud</b> & clipped",
        "<a href=x>MIT</a>",
        "<img src=x onerror=alert(1)>",
    ):
        assert text not in page
        assert html.escape(text) in page
    data = json.loads(elements.scripts[0])
    assert list(data["tracks"]) == [HOSTILE_ID], "the data block round-trips the id"
    # A right-to-left override in user text turns only its own element round.
    assert "dd, td, .reason, h2 { unicode-bidi: isolate; }" in page


def test_links_are_relative_and_no_signed_link_or_uri_reaches_the_page() -> None:
    ogg = record("games/sky/loop/abc.ogg", b"ogg", "ogg", url=SIGNED, loop_start=0)
    wav = record("games/sky/loop/abc.wav", b"wav", "wav", loop_start=100, loop_length=88200)
    picture = PictureRecord(
        key="games/sky/loop/abc.png",
        uri="s3://bucket/games/sky/loop/abc.png",
        sha256="0" * 64,
        bytes=3,
        width_px=1600,
        height_px=900,
        url=SIGNED,
    )
    track = TrackRecord(
        id="loop", status="approved", spec_hash="abc", files=[ogg, wav], picture=picture
    )
    page = review_page(report_of([track]), folder="games/sky/")
    elements = parsed(page)

    sources = [a["src"] for t, a in elements.tags if t == "audio"]
    assert sources == ["loop/abc.ogg", "loop/abc.wav"]
    images = [a for t, a in elements.tags if t == "img"]
    assert [(i["src"], i["width"], i["height"], i["loading"]) for i in images] == [
        ("loop/abc.png", "1600", "900", "lazy")  # 60 tracks' pictures weighed 19 MB at once
    ]
    assert "X-Amz-Signature" not in page and "s3://" not in page and "https://" not in page
    loop = json.loads(elements.scripts[0])["tracks"]["loop"]["loop"]
    assert loop == {
        "url": "loop/abc.wav",
        "format": "wav",
        "sample_rate": 44100,
        "loop_start": 100,
        "loop_length": 88200,
    }, "the lossless file, with the lock's loop points in samples"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=95-1000", 100, (95, 99)),
        ("bytes=0-1,5-9", 100, None),  # several ranges: the whole file is a valid answer
        ("items=0-9", 100, None),
        ("bytes=0-" + "9" * 5000, 100, None),  # past int()'s digit limit: malformed, ignored
    ],
)
def test_byte_ranges_follow_rfc_9110(
    header: str | None, size: int, expected: tuple[int, int] | None
) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=-0", "bytes=100-", "bytes=100-200"])
def test_a_range_of_no_byte_of_the_file_is_unsatisfiable(header: str) -> None:
    """RFC 9110 §15.5.17: 416, where a whole file or an empty body would mislead a player."""
    with pytest.raises(Unsatisfiable):
        byte_range(header, 100)


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("127.0.0.1:8765", 8765, True),
        ("LOCALHOST:8765", 8765, True),
        ("127.0.0.1", 8765, False),
        ("127.0.0.1:80", 8765, False),
        ("127.0.0.1", 80, True),  # a browser leaves the default port out
        ("localhost", 80, True),
        ("attacker.example", 80, False),
        ("attacker.example:8765", 8765, False),
        (None, 8765, False),
    ],
)
def test_the_server_answers_the_host_names_of_this_machine_only(
    host: str | None, port: int, allowed: bool
) -> None:
    assert allowed_host(host, port) is allowed


def test_a_candidate_file_no_longer_staged_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "loop.wav").write_bytes(b"take")
    track = TrackRecord(
        id="loop", status="approved", spec_hash="abc", files=[record("loop.wav", b"take", "wav")]
    )
    site = CandidateSite(report_of([track]), tmp_path)
    assert site.file("loop.wav")[0] == tmp_path / "loop.wav"
    (tmp_path / "loop.wav").unlink()
    with pytest.raises(RequestError, match="no longer staged") as caught:
        site.file("loop.wav")
    assert caught.value.status == 404


def test_a_candidate_file_changed_since_it_was_judged_is_not_sent(tmp_path: Path) -> None:
    """A reviewer approves what passed the gates: a staged take changed since (another tool, a
    bad disk) answers 502, even after the same file was sent unchanged before."""
    (tmp_path / "loop.wav").write_bytes(b"take")
    track = TrackRecord(
        id="loop", status="approved", spec_hash="abc", files=[record("loop.wav", b"take", "wav")]
    )
    site = CandidateSite(report_of([track]), tmp_path)
    assert site.file("loop.wav")[0] == tmp_path / "loop.wav"
    (tmp_path / "loop.wav").write_bytes(b"tape")  # same size, other bytes, another time
    os.utime(tmp_path / "loop.wav", ns=(0, 10**18))
    with pytest.raises(RequestError, match="changed since it was judged") as caught:
        site.file("loop.wav")
    assert caught.value.status == 502


class Served:
    """A review server on a storage, run on a thread for one test."""

    def __init__(self, storage: Storage, cache: Path) -> None:
        self.site = ReviewSite(storage, SOUNDTRACK, cache)
        self.server = make_server(self.site, 0)
        self.port = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        # http.client sends the path as given: no normalising of '..' as a browser would.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            reply = connection.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            connection.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, bytes]]:
    root = tmp_path / "assets"
    audio = bytes(range(256)) * 40
    (root / SOUNDTRACK).mkdir(parents=True)
    (root / SOUNDTRACK / "loop.wav").write_bytes(audio)
    (root / SOUNDTRACK / "notes.txt").write_bytes(b"mix notes")
    (tmp_path / "outside.txt").write_bytes(b"outside the storage")
    wav = record(f"{SOUNDTRACK}/loop.wav", audio, "wav")
    track = TrackRecord(id="loop", status="approved", spec_hash="abc", files=[wav])
    LocalStorage(str(root), root).write_index(SOUNDTRACK, report_of([track]).to_json().encode())
    server = Served(LocalStorage(str(root), root), tmp_path / "cache")
    try:
        yield server, audio
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_the_server_sends_the_page_and_byte_ranges_of_files_in_the_lock(
    served: tuple[Served, bytes],
) -> None:
    server, audio = served
    status, headers, body = server.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert b'src="loop.wav"' in body

    status, headers, body = server.get("/loop.wav", Range="bytes=100-1099")
    assert status == 206 and body == audio[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(audio)}"
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "audio/wav"
    # Another site's page may not play the files in its own <audio> (the Host check cannot
    # tell: the browser sends this server's own name).
    assert headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = server.get("/loop.wav")
    assert status == 200 and body == audio
    status, headers, _ = server.get("/loop.wav", Range=f"bytes={len(audio)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(audio)}"


def test_a_file_is_tagged_by_its_sha256_and_a_range_of_another_version_is_not_sent(
    served: tuple[Served, bytes],
) -> None:
    """If-Range was ignored: a player resuming a download of a file rebuilt since would have
    spliced two versions. The Server header named Python's version."""
    server, audio = served
    etag = f'"{hashlib.sha256(audio).hexdigest()}"'
    status, headers, _ = server.get("/loop.wav")
    assert headers["ETag"] == etag and headers["Server"] == "soundtrack-review"
    status, _, body = server.get("/loop.wav", Range="bytes=10-19", **{"If-Range": etag})
    assert status == 206 and body == audio[10:20]
    status, _, body = server.get("/loop.wav", Range="bytes=10-19", **{"If-Range": etag + "  "})
    assert status == 206 and body == audio[10:20]
    for other in ('"0123"', f"W/{etag}", "Mon, 07 Dec 2026 00:00:00 GMT"):
        status, headers, body = server.get("/loop.wav", Range="bytes=10-19", **{"If-Range": other})
        assert status == 200 and body == audio and "Content-Range" not in headers, other
    for tags in (etag, f'"0123", W/{etag}', "*"):
        status, headers, body = server.get("/loop.wav", **{"If-None-Match": tags})
        assert status == 304 and body == b"" and headers["ETag"] == etag, tags
        assert headers["Cache-Control"] == "no-cache"  # RFC 9110 §15.4.5: as the 200's
    assert server.get("/loop.wav", **{"If-None-Match": '"0123"'})[0] == 200


def test_a_lock_deleted_while_serving_is_not_found(
    served: tuple[Served, bytes], tmp_path: Path
) -> None:
    server, _ = served
    assert server.get("/")[0] == 200
    (tmp_path / "assets" / SOUNDTRACK / "soundtrack.lock.json").unlink()
    status, _, body = server.get("/")
    assert status == 404 and b"no lock for soundtrack 'sky'" in body, body
    assert server.get("/loop.wav")[0] == 404  # what no lock names is not served


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/notes.txt", 404),  # beside the lock, but not in it
        ("/soundtrack.lock.json", 404),
        ("/soundtrack.journal.jsonl", 404),
        ("/../../outside.txt", 400),
        ("/%2e%2e/%2e%2e/outside.txt", 400),
        ("/sub/../loop.wav", 400),
        ("//etc/passwd", 404),  # http.server reads a leading '//' as '/'; no such key
    ],
)
def test_the_server_refuses_what_the_lock_does_not_name(
    served: tuple[Served, bytes], path: str, status: int
) -> None:
    server, _ = served
    got, headers, body = server.get(path)
    assert got == status, body
    assert headers["X-Content-Type-Options"] == "nosniff"  # the path it echoes stays text
    assert b"outside the storage" not in body and b"mix notes" not in body


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /\x1b[31mred\x1b]0;title\x07.wav HTTP/1.1",
        b"\x1b[2JGET / HTTP/1.1",
        b"GET / FOO/1.1",  # too malformed to parse: no command or path set
        b"GET",
    ],
)
def test_a_request_line_holding_terminal_controls_is_logged_written_out(
    served: tuple[Served, bytes], capsys: pytest.CaptureFixture[str], request_line: bytes
) -> None:
    """Request lines went to the terminal as sent: escape sequences in a path or a method
    could recolour it or set its title."""
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        headers = f"Host: 127.0.0.1:{server.port}\r\nConnection: close".encode()
        connection.sendall(request_line + b"\r\n" + headers + b"\r\n\r\n")
        reply = connection.makefile("rb").read()
    assert any(code in reply for code in (b"400", b"404", b"501")), reply  # answered
    logged = capsys.readouterr().err
    assert "\x1b" not in logged and "\x07" not in logged and "Traceback" not in logged
    assert logged.endswith(tuple(f": {code}\n" for code in (400, 404, 501))), logged
    assert ("\\x1b[" in logged) == (b"\x1b" in request_line), logged


def test_the_server_refuses_other_host_names_and_changed_files(
    served: tuple[Served, bytes], tmp_path: Path
) -> None:
    server, _ = served
    status, _, _ = server.get("/", Host="attacker.example")  # DNS rebinding
    assert status == 403
    published = tmp_path / "assets" / SOUNDTRACK / "loop.wav"
    published.write_bytes(b"changed after the lock")
    status, _, body = server.get("/loop.wav")
    assert status == 502 and b"changed since" in body and str(published).encode() in body
    published.unlink()
    status, _, body = server.get("/loop.wav")
    assert status == 502 and b"No such file" in body and str(published).encode() in body
    # A FIFO put in its place: reading it waited for a writer, and every later request with it.
    os.mkfifo(published)
    status, _, body = server.get("/loop.wav")
    assert status == 502 and b"not a regular file" in body, body
    assert server.get("/")[0] == 200


def test_a_silent_connection_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each open connection holds a thread: 300 that sent nothing were held for ever."""
    monkeypatch.setattr("soundtrack.review_server._Handler.timeout", 0.5)
    root = tmp_path / "assets"
    (root / SOUNDTRACK).mkdir(parents=True)
    LocalStorage(str(root), root).write_index(SOUNDTRACK, report_of([]).to_json().encode())
    server = Served(LocalStorage(str(root), root), tmp_path / "cache")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            silent.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
            assert silent.recv(1024) == b"", "closed without an answer"
        assert server.get("/")[0] == 200
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert "Traceback" not in capsys.readouterr().err


def test_a_browser_gone_before_its_error_is_sent_leaves_no_traceback(
    served: tuple[Served, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Many error replies queued to a socket reset under them: one send hits the reset.
        host = f"Host: 127.0.0.1:{server.port}\r\n\r\n".encode()
        connection.sendall(b"".join(b"GET /notes.txt HTTP/1.1\r\n" + host for _ in range(200)))
    assert server.get("/")[0] == 200  # served on, after the reset
    # Whichever step the reset lands in (reading, answering, refusing), and a real error still
    # has its traceback.
    for error in (BrokenPipeError(), ConnectionResetError(), ValueError("a bug")):
        try:
            raise error
        except Exception:
            server.server.handle_error(None, ("127.0.0.1", 1))  # type: ignore[arg-type]
    logged = capsys.readouterr().err
    assert "BrokenPipe" not in logged and "ConnectionReset" not in logged, logged
    assert logged.count("Traceback") == 1 and "ValueError: a bug" in logged, logged


def test_a_lock_naming_a_path_for_a_sha256_serves_nothing_outside(
    served: tuple[Served, bytes], tmp_path: Path
) -> None:
    """The server keeps its copies under their sha256: a lock's `../outside.txt` for one was
    served from outside its cache, unchecked (any file on the machine)."""
    server, _ = served
    lock = tmp_path / "assets" / SOUNDTRACK / "soundtrack.lock.json"
    record = json.loads(lock.read_text())
    record["tracks"][0]["files"][0]["sha256"] = "../outside.txt"  # the cache is tmp_path/cache
    lock.write_text(json.dumps(record))
    for path in ("/", "/loop.wav"):
        status, _, body = server.get(path)
        assert status == 500 and b"sha256" in body, (path, body)
        assert b"outside the storage" not in body


def test_the_server_reads_no_link_out_of_the_storage_and_no_key_of_another_folder(
    served: tuple[Served, bytes], tmp_path: Path
) -> None:
    """A hand-edited lock: a file that is a link to outside the storage root (with the sha256
    of what it points to) was served; a key in another soundtrack's folder crashed the page."""
    server, audio = served
    folder = tmp_path / "assets" / SOUNDTRACK
    (folder / "loop.wav").unlink()
    (folder / "loop.wav").symlink_to(tmp_path / "elsewhere.wav")
    (tmp_path / "elsewhere.wav").write_bytes(audio)
    status, _, body = server.get("/loop.wav")
    assert status == 502 and b"a link out of" in body and body != audio

    other = record("other-soundtrack/x.ogg", b"ogg", "ogg")
    track = TrackRecord(id="x", status="approved", spec_hash="abc", files=[other])
    storage = LocalStorage(str(tmp_path / "assets"), tmp_path / "assets")
    storage.write_index(SOUNDTRACK, report_of([track]).to_json().encode())
    status, _, body = server.get("/")
    assert status == 500 and b"outside its folder" in body


@pytest.mark.slow
def test_from_s3_the_server_reads_with_its_own_credentials_and_the_page_holds_none(
    s3_bucket: str, s3_env: SeaweedServer, tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/games", base_dir=tmp_path)
    audio = bytes(range(256)) * 40
    (tmp_path / "loop.wav").write_bytes(audio)
    sha256 = hashlib.sha256(audio).hexdigest()
    key = storage.asset_key(SOUNDTRACK, "loop", "abc123", "wav", sha256=sha256)
    name = f"loop/abc123.{sha256[:16]}.wav"
    storage.put_asset(tmp_path / "loop.wav", key, sha256=sha256, content_type="", metadata={})
    # As `build --report` records it: with a presigned link, which the page must not carry.
    wav = record(key, audio, "wav", url=storage.presign(key))
    track = TrackRecord(id="loop", status="approved", spec_hash="abc123", files=[wav])
    storage.write_index(SOUNDTRACK, report_of([track]).to_json().encode())
    server = Served(storage, tmp_path / "cache")
    try:
        status, _, page = server.get("/")
        assert status == 200 and f'src="{name}"'.encode() in page
        for secret in (s3_env.access_key, s3_env.secret_key, "X-Amz-", "Signature"):
            assert secret.encode() not in page
        status, _, body = server.get(f"/{name}", Range="bytes=0-99")
        assert status == 206 and body == audio[:100]
        assert server.get("/loop/other.wav")[0] == 404
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.mark.timeout(60)  # a check lost here serves forever: fail, do not hang the suite
def test_review_of_a_soundtrack_not_published_there_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["review", str(tmp_path), "--soundtrack", "nowhere"])
    assert result.exit_code == 2, result.output
    assert "no lock for soundtrack 'nowhere'" in result.output
    result = runner.invoke(app, ["review", str(tmp_path), "--soundtrack", "../up"])
    assert result.exit_code == 2 and "cannot be part of a storage key" in result.output
    (tmp_path / "take.ogg").write_bytes(b"OggS")  # a file given for the folder
    result = runner.invoke(app, ["review", str(tmp_path / "take.ogg"), "--soundtrack", "game"])
    assert result.exit_code == 2 and "no lock for soundtrack 'game'" in result.output


@pytest.mark.timeout(60)
def test_review_on_a_port_in_use_exits_2_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    (root / SOUNDTRACK).mkdir(parents=True)
    (root / SOUNDTRACK / "loop.wav").write_bytes(b"take")
    wav = record(f"{SOUNDTRACK}/loop.wav", b"take", "wav")
    track = TrackRecord(id="loop", status="approved", spec_hash="abc", files=[wav])
    LocalStorage(str(root), root).write_index(SOUNDTRACK, report_of([track]).to_json().encode())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["review", str(root), "--soundtrack", SOUNDTRACK, "--port", str(port)]
        )
    assert result.exit_code == 2, result.output
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.output


@contextmanager
def _review_with_browser(
    tmp_path: Path, browser: str
) -> Iterator[tuple[subprocess.Popen[str], bytes]]:
    """`soundtrack review --open` of a published loop, with `browser` as the web browser,
    stopped with SIGTERM on leaving; its stderr goes to tmp_path / "stderr" (read while it
    serves)."""
    root = tmp_path / "assets"
    audio = b"published audio" * 100
    (root / SOUNDTRACK).mkdir(parents=True)
    (root / SOUNDTRACK / "loop.wav").write_bytes(audio)
    wav = record(f"{SOUNDTRACK}/loop.wav", audio, "wav")
    track = TrackRecord(id="loop", status="approved", spec_hash="abc", files=[wav])
    LocalStorage(str(root), root).write_index(SOUNDTRACK, report_of([track]).to_json().encode())
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "BROWSER")}
    with (tmp_path / "stderr").open("w") as stderr:  # the child keeps its own copy
        process = subprocess.Popen(
            [CLI, "review", str(root), "--soundtrack", SOUNDTRACK, "--port", "0", "--open"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**env, "TMPDIR": str(temp), "BROWSER": browser},
        )
    try:
        yield process, audio
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _within_30_s(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds, 30 s at most (the assertions after say what it missed)."""
    for _ in range(300):
        if condition():
            return
        time.sleep(0.1)


def test_review_stopped_by_sigterm_deletes_its_copies_and_says_when_no_browser_opens(
    tmp_path: Path,
) -> None:
    # --open where no browser can start said nothing, and the user waited for one.
    temp = tmp_path / "tmp"
    with _review_with_browser(tmp_path, str(tmp_path / "no-such-browser")) as (process, audio):
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        with urllib.request.urlopen(f"{url}loop.wav", timeout=10) as reply:
            assert reply.read() == audio
        (cache,) = temp.iterdir()
        assert any(cache.iterdir()), "the fetched copy is there while it serves"
        # Said by the thread that tried the browser, while the page is served.
        said = f"no web browser opened here: open {url} in one"
        _within_30_s(lambda: said in (tmp_path / "stderr").read_text())
    stderr = (tmp_path / "stderr").read_text()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped" in stderr
    assert said in stderr, stderr
    assert list(temp.iterdir()) == []


def test_review_open_serves_a_browser_that_holds_the_terminal(tmp_path: Path) -> None:
    """A text browser (lynx, w3m: the one picked without a display) holds the call that opens
    it until it quits, and the page was served only after that: it waited for ever."""
    seen = tmp_path / "seen"
    browser = tmp_path / "browser.py"
    browser.write_text(
        f"#!{sys.executable}\n"
        "import sys, urllib.request\n"
        "with urllib.request.urlopen(sys.argv[1], timeout=20) as reply:\n"
        f"    open({str(seen)!r}, 'w').write(str(reply.status))\n"
    )
    browser.chmod(0o755)
    with _review_with_browser(tmp_path, str(browser)):
        _within_30_s(lambda: seen.exists() and bool(seen.read_text()))
    stderr = (tmp_path / "stderr").read_text()
    assert seen.read_text() == "200", stderr
    assert "no web browser" not in stderr, stderr


def test_numbers_read_as_numbers_a_person_would_write() -> None:
    track = TrackRecord(
        id="t",
        status="approved",
        spec_hash="abc",
        gates=[
            GateResult("sample_rate", 44100.0, "44100", True, "fail"),
            GateResult("loudness", -23.98765, "-24 +/- 1", True, "fail"),
            GateResult("duration", 1234567.0, "600", False, "fail"),
        ],
        analysis={"tempo_bpm": 120.04},
    )
    page = review_page(report_of([track]), folder="")
    cells = [c for c in re.findall(r"<td>([^<]*)</td>", page)]
    assert {"44100", "-23.988", "1234567", "120.04"} <= set(cells), cells
    assert not [c for c in cells if "e+" in c]
