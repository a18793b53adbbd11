"""Secrets out of every message: `redact(text)` blanks the credential values in use.

The first line of defence is refusing credentials where they do not belong (URLs); this is the
second: whatever text leaves the program (CLI errors, log records, Prefect artifacts, storage
errors) passes through `redact`, which replaces every known secret value with `***`.

Known secrets: the AWS secret key and session token (from the environment, and as botocore
resolved them: `remember` is called by the S3 storage), Prefect's API key and auth string, any
password seen in a URL. The AWS access key id is not one: AWS calls it an identifier, every
presigned link carries it (X-Amz-Credential), and it tells which credentials a request used.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from typing import Any
from urllib.parse import quote, unquote

from soundtrack.errors import SoundtrackError

__all__ = [
    "MASK",
    "RedactingFilter",
    "install_log_redaction",
    "redact",
    "remember",
    "remember_url",
    "url_has_credentials",
]

MASK = "***"
# Shorter values would blank ordinary words everywhere; a short password in a URL is still
# caught by _URL_USERINFO below.
MIN_SECRET_CHARS = 4
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
)
# Variables holding URLs that people do put passwords in (proxies above all).
URL_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "SOUNDTRACK_STORAGE",
    "PREFECT_API_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)

# scheme://user[:password]@ -> scheme://***@ (the authority ends at '/', '?' or '#').
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#@'\"<>]+)@")
# A presigned link made with temporary credentials carries the session token: AWS hands such
# links to anyone, the token signs nothing without the secret key, and a masked one breaks it.
_PRESIGNED_TOKEN = re.compile(r"(X-Amz-Security-Token=[^&#\s'\"<>()\[\]]*)", re.IGNORECASE)

_lock = threading.Lock()
_remembered: frozenset[str] = frozenset()


def remember(*values: str | None) -> None:
    """Add secret values (None, empty and very short ones are ignored) for `redact` to blank."""
    global _remembered
    new = {v for v in values if v and len(v) >= MIN_SECRET_CHARS} - _remembered
    if new:
        with _lock:
            _remembered = _remembered | new


def url_has_credentials(url: str) -> bool:
    """True when a URL carries user info (`scheme://user[:password]@host`)."""
    scheme, sep, rest = url.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return False
    # `s3:/user:pass@bucket` is malformed, but its message would still echo the secret.
    authority = rest.lstrip("/").split("/", 1)[0]
    return "@" in authority


def remember_url(url: str) -> None:
    """Remember the password of a URL with user info (the user alone when it has no password:
    `https://TOKEN@host`)."""
    secret = _userinfo_secret(url)
    if secret is not None:
        remember(secret, unquote(secret))


def redact(text: str) -> str:
    """`text` with every known secret (raw or percent-encoded) and every URL's user info
    replaced by `***`; a presigned link's session token parameter is kept (see above)."""
    # A message may quote a URL and also its parts ("invalid bucket 'user:pw@bucket'"): the
    # secret of each URL in the text is blanked wherever it appears.
    in_text = {_userinfo_secret(f"{m[1]}{m[2]}@") or "" for m in _URL_USERINFO.finditer(text)}
    secrets = _variants({s for s in in_text if len(s) >= MIN_SECRET_CHARS} | _secrets_in_use())
    parts = _PRESIGNED_TOKEN.split(text)
    # re.split with one group: odd items are the token parameters, kept as they are.
    return "".join(part if i % 2 else _redact_part(part, secrets) for i, part in enumerate(parts))


class RedactingFilter(logging.Filter):
    """Redacts a record in place (message, arguments, traceback; an error of ours in one line,
    not its traceback) and lets it through.

    Usable on any handler, e.g. in a Prefect worker's logging.yml: `(): soundtrack.redaction.
    RedactingFilter`; `install_log_redaction` applies it to every record of this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as usual
            return True
        record.msg, record.args = redact(message), None
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SoundtrackError):
            # Ours says what went wrong in its message; the traceback Prefect logs for a failed
            # task (a storage gone away) would read as a bug.
            record.exc_text = f"{type(error).__name__}: {error}"
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # Formatters print exc_text when set; a handler rendering exc_info itself (rich
            # tracebacks with locals) would bypass it.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Redact every log record of this process when it is created (idempotent).

    A record factory, not a filter on some loggers: a logger's filters never see records that
    propagate from child loggers (botocore, urllib3), and Prefect's logging setup replaces its
    handlers (dictConfig) after they were made, the APILogHandler that sends run logs to the
    server among them. Every handler formats the record's message, so all of them get the
    redacted text."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _secrets_in_use() -> set[str]:
    """Remembered values plus those in the environment now."""
    found = set(_remembered)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= MIN_SECRET_CHARS:
            found.add(value)
    for name in URL_VARIABLES:
        secret = _userinfo_secret(os.environ.get(name, ""))
        if secret is not None and len(secret) >= MIN_SECRET_CHARS:
            found.add(secret)
    return found


def _variants(secrets: set[str]) -> list[str]:
    """Each secret raw, trimmed, percent-decoded and percent-encoded, and as Python quotes it
    in a str or bytes (a token with a line break: `b'...\\n'` in an HTTP library's error),
    longest first (a secret that contains another is blanked whole)."""
    found = secrets | {unquote(value) for value in secrets} | {v.strip() for v in secrets}
    found |= {quote(value, safe="") for value in found}
    found |= {repr(value)[1:-1] for value in found}
    found |= {repr(value.encode("utf-8", "surrogatepass"))[2:-1] for value in found}
    return sorted((v for v in found if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def _userinfo_secret(url: str) -> str | None:
    """The password of a URL's user info, or the user when there is no password."""
    if not url_has_credentials(url):
        return None
    userinfo = url.partition(":")[2].lstrip("/").split("/", 1)[0].rpartition("@")[0]
    user, sep, password = userinfo.partition(":")
    return password if sep else user


def _redact_part(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL_USERINFO.sub(rf"\1{MASK}@", text)
