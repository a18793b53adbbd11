"""Secrets never leave the program: `redact` on messages, log records and what the CLI prints."""

from __future__ import annotations

import io
import logging
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.redaction import (
    install_log_redaction,
    redact,
    remember,
    remember_url,
    url_has_credentials,
)


def new_secret(prefix: str) -> str:
    """Recognisable and unique, with the characters AWS secret keys contain ('/', '+')."""
    return f"{prefix}-{secrets.token_hex(8)}/x+y"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_redaction() -> Iterator[None]:
    """The CLI's log redaction, undone afterwards (the record factory is process-wide)."""
    previous = logging.getLogRecordFactory()
    install_log_redaction()
    yield
    logging.setLogRecordFactory(previous)


def test_redact_blanks_the_secret_key_and_session_token_and_leaves_other_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_key, token = new_secret("secret-key"), new_secret("session-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE0000")

    text = (
        f"signed with {secret_key} (token {token}), encoded {quote(secret_key, safe='')}; "
        "key id AKIAEXAMPLE0000, s3://game-assets/music/take@2x.ogg at http://127.0.0.1:8333"
    )
    assert redact(text) == (
        "signed with *** (token ***), encoded ***; "
        "key id AKIAEXAMPLE0000, s3://game-assets/music/take@2x.ogg at http://127.0.0.1:8333"
    )
    plain = "uploading title-theme.ogg to s3://bucket/key: SlowDown (HTTP 503)"
    assert redact(plain) == plain


def test_a_secret_with_a_line_end_is_blanked_as_a_library_quotes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token saved with its line end was printed whole: an HTTP library quoted it as bytes,
    `b'...\\n'`, a form redact() did not know."""
    token = new_secret("session-token")
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"{token}\n")
    quoted = f"Invalid header value {(token + chr(10)).encode()!r}; as text {token + chr(10)!r}"
    assert redact(quoted) == "Invalid header value b'***'; as text '***'"
    assert redact(f"trimmed: {token}.") == "trimmed: ***."


def test_redact_blanks_url_passwords_wherever_they_appear() -> None:
    password = new_secret("url-password")
    remember_url(f"http://AKIDEXAMPLE:{quote(password, safe='')}@127.0.0.1:8333")
    assert redact(f"the server said {password}") == "the server said ***"

    # Unencoded in a URL a password holds no '/': the URL would end there.
    unseen = f"never-remembered-{secrets.token_hex(8)}"
    message = f"invalid bucket 'user:{unseen}@bucket' (got 's3://user:{unseen}@bucket/p')"
    assert redact(message) == "invalid bucket 'user:***@bucket' (got 's3://***@bucket/p')"
    assert redact("GET https://ghp0token0value@github.com/x") == "GET https://***@github.com/x"
    assert redact("ssh://git@github.com/org/repo") == "ssh://***@github.com/org/repo"


def test_a_presigned_links_session_token_parameter_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = new_secret("session-token")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    link = (
        "https://s3.example.com/b/k.ogg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Security-Token={quote(token, safe='')}"
        "&X-Amz-Signature=0123abcd"
    )
    assert redact(f"[ogg]({link})") == f"[ogg]({link})", "a masked token breaks the link"
    assert redact(f"token {token} in a message") == "token *** in a message"


def test_short_values_are_not_blanked_everywhere() -> None:
    remember("ab", "", None)
    assert redact("about a bus") == "about a bus"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://user:pw@bucket/p", True),
        ("s3:/user:pw@bucket", True),
        ("https://TOKEN@host/x", True),
        ("s3://bucket/take@2x", False),
        ("./out@2x", False),
        ("/abs/a:b@c", False),
        ("s3://bucket", False),
    ],
)
def test_credentials_in_a_url_are_found_in_its_authority_only(url: str, expected: bool) -> None:
    assert url_has_credentials(url) is expected


def test_log_records_are_redacted_whatever_logger_or_handler_gets_them(
    monkeypatch: pytest.MonkeyPatch, log_redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    secret_key = new_secret("secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    caplog.set_level(logging.DEBUG)
    # A child logger: a filter on the root logger would never see its records.
    logger = logging.getLogger("botocore.test-redaction")
    logger.debug("signing with %s", secret_key)
    try:
        raise ValueError(f"bad secret {secret_key}")
    except ValueError:
        logger.exception("request failed")

    assert [r.getMessage() for r in caplog.records] == ["signing with ***", "request failed"]
    assert "ValueError: bad secret ***" in caplog.text
    assert secret_key not in caplog.text
    # A handler that renders the exception itself (rich tracebacks) finds none to render.
    assert caplog.records[1].exc_info is None


def test_secrets_of_four_characters_are_blanked_and_shorter_ones_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("soundtrack.redaction._remembered", frozenset())  # not for later tests
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Qz7w")
    remember("Wq9j", "Vx3")
    assert redact("keys Qz7w, Wq9j and Vx3") == "keys ***, *** and Vx3"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Qz7")
    assert redact("key Qz7") == "key Qz7"


def test_a_secret_beyond_ascii_is_blanked_as_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that logs a header as bytes writes `b'p\\xc3\\xa4ss'`, not the text."""
    secret = f"pässwörd-{secrets.token_hex(4)}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert redact(f"sent {secret.encode()!r} and {secret!r}") == "sent b'***' and '***'"


def test_a_proxys_password_and_a_tokens_user_part_are_blanked_wherever_they_appear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password, token = new_secret("proxy-password"), secrets.token_hex(12)
    monkeypatch.setenv("HTTPS_PROXY", f"http://builder:{quote(password, safe='')}@proxy:3128")
    remember_url(f"https://{token}@git.example.com/game.git")  # a token as the URL's user
    assert redact(f"proxy refused {password}; token {token}") == "proxy refused ***; token ***"


def test_what_follows_a_presigned_links_token_is_still_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_key = new_secret("secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    line = f"https://s3.example.com/b/k.ogg?X-Amz-Security-Token=t0k3n&note={secret_key}"
    assert redact(line) == "https://s3.example.com/b/k.ogg?X-Amz-Security-Token=t0k3n&note=***"


def test_prefect_run_logs_sent_to_the_server_are_redacted(
    monkeypatch: pytest.MonkeyPatch, log_redaction: None
) -> None:
    import prefect.main  # noqa: F401 - sets up logging (dictConfig) as every Prefect process does
    from prefect.logging.handlers import APILogHandler

    secret_key = new_secret("secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    # Run loggers log on prefect.flow_runs, where Prefect's logging setup puts its APILogHandler.
    run_logger = logging.getLogger("prefect.flow_runs")
    assert any(isinstance(h, APILogHandler) for h in run_logger.handlers)
    capture = Capture()
    run_logger.addHandler(capture)
    try:
        # send_to_api=False: the APILogHandler skips it (no server here); prepare() below builds
        # the exact payload it would send.
        extra = {"flow_run_id": str(uuid.uuid4()), "send_to_api": False}
        run_logger.warning("upload failed with %s", secret_key, extra=extra)
    finally:
        run_logger.removeHandler(capture)

    (record,) = capture.records
    payload = APILogHandler().prepare(record)
    assert payload["message"].endswith("upload failed with ***")
    assert secret_key not in str(payload)


def test_cli_errors_are_redacted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_key = new_secret("secret-key").replace("/", "_")  # part of a folder name below
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    folder = tmp_path / f"folder-{secret_key}"
    result = CliRunner().invoke(app, ["gc", str(folder), "--soundtrack", "sky-odyssey"])
    assert result.exit_code == 2, result.output
    assert "folder-***" in " ".join(result.output.split())
    assert secret_key not in result.output


def test_cli_manifest_problems_are_redacted(tmp_path: Path) -> None:
    password = new_secret("pw").replace("/", "_")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"schema: 1\nsoundtrack: t\nstorage: s3://AKIDEXAMPLE:{password}@bucket/p\n"
        "defaults: {duration: 4, formats: [ogg]}\ntracks:\n  - id: a\n    prompt: strings\n"
    )
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "storage URL must not carry credentials" in said and "AWS_ACCESS_KEY_ID" in said
    assert password not in result.output


def test_an_error_of_ours_is_logged_in_one_line_and_a_bug_with_its_traceback(
    log_redaction: None,
) -> None:
    """Prefect logs a failed task's exception with its traceback; ours (a storage gone away)
    says what went wrong in one line, and only a bug keeps the traceback."""
    from soundtrack.errors import StorageError

    logger = logging.getLogger(f"soundtrack.test.{uuid.uuid4().hex}")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        for error in (StorageError("s3://b/k: connection refused", transient=True), KeyError("x")):
            try:
                raise error
            except Exception as exc:
                logger.error("Task run failed with exception: %r", exc, exc_info=True)
    finally:
        logger.removeHandler(handler)
    ours, bug = stream.getvalue().split("Task run failed")[1:]
    assert "StorageError: s3://b/k: connection refused" in ours and "Traceback" not in ours
    assert "Traceback (most recent call last)" in bug and "KeyError: 'x'" in bug
