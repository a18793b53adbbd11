"""The build report / lock file and its JUnit rendering."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pydantic import BaseModel

from soundtrack.gates import GateResult
from soundtrack.publish import lock_bytes, track_record
from soundtrack.report import (
    REPORT_SCHEMA,
    BuildReport,
    FileRecord,
    LockUnreadable,
    StemRecord,
    TakeRecord,
    TrackRecord,
    parse_lock,
    to_junit,
)
from tests.specs import make_spec

FILE = FileRecord(
    format="ogg",
    key="s3key/a.ogg",
    uri="s3://bucket/s3key/a.ogg",
    sha256="ab" * 32,
    bytes=10,
    duration_s=10.0,
    sample_rate=44100,
    channels=2,
    url="https://example.invalid/a.ogg?X-Amz-Signature=secret",
)


def report() -> BuildReport:
    loud = GateResult("loudness", -12.0, "-24.0 ± 2.0 LUFS", False, "fail")
    dc = GateResult("dc_offset", 0.01, "<= 0.001", False, "warn")
    return BuildReport(
        soundtrack="game",
        storage="s3://bucket/x",
        tracks=[
            track_record(make_spec(id="a"), "approved", files=[FILE]),
            track_record(make_spec(id="b"), "rejected", gates=[loud, dc], reason="loudness"),
            track_record(make_spec(id="c"), "failed", reason="track 'c': output is NaN"),
            track_record(make_spec(id="d"), "cached", files=[FILE]),
        ],
    )


def test_junit_names_failed_gates_and_errors() -> None:
    suite = ET.fromstring(to_junit(report()).split("\n", 1)[1])
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    failure = cases["b"].find("failure")
    assert failure is not None and "loudness: -12.0" in failure.get("message", "")
    assert "dc_offset" not in failure.get("message", ""), "warnings are not failures"
    error = cases["c"].find("error")
    assert error is not None and "NaN" in error.get("message", "")
    assert cases["a"].find("failure") is None and cases["d"].find("error") is None
    # In UTC without a zone, as Ant's JUnit schema has it (its validators refused "+00:00").
    stamped = report().model_copy(update={"created_at": "2026-12-05T23:30:00+01:00"})
    suite = ET.fromstring(to_junit(stamped).split("\n", 1)[1])
    assert suite.get("timestamp") == "2026-12-05T22:30:00"


def test_ok_only_when_every_track_is_usable() -> None:
    whole = report()
    assert not whole.ok
    assert BuildReport(soundtrack="g", storage="x", tracks=whole.tracks[::3]).ok
    assert whole.counts() == {"approved": 1, "cached": 1, "rejected": 1, "failed": 1}


def test_lock_keeps_no_presigned_links_and_round_trips() -> None:
    data = lock_bytes(report())
    assert b"X-Amz-Signature" not in data
    again = parse_lock(data)
    assert again is not None and [t.id for t in again.tracks] == ["a", "b", "c", "d"]
    assert json.loads(data)["tracks"][0]["files"][0]["sha256"] == "ab" * 32


def test_an_unreadable_lock_says_what_is_wrong() -> None:
    assert parse_lock(None) is None
    good = json.loads(lock_bytes(report()))
    truncated = lock_bytes(report())[:100]
    newer = json.dumps({**good, "report_schema": 2}).encode()
    escaping = json.loads(lock_bytes(report()))
    escaping["tracks"][0]["files"][0]["key"] = "g/../../etc/passwd"
    absolute = json.loads(lock_bytes(report()))
    absolute["tracks"][0]["files"][0]["key"] = "/etc/passwd"
    # The review server names its copies by sha256: this one served /etc/passwd.
    named = json.loads(lock_bytes(report()))
    named["tracks"][0]["files"][0]["sha256"] = "../../../../etc/passwd"
    # A review server served the journal's record a forged lock named.
    hidden = json.loads(lock_bytes(report()))
    hidden["tracks"][0]["files"][0]["key"] = "g/.journal/a.ogg/" + "ab" * 32
    # Read, then written back as null, which the next read refused after publishing.
    endless = lock_bytes(report()).replace(b'"duration_s": 10.0', b'"duration_s": Infinity', 1)
    cases = {
        truncated: "Invalid JSON",
        b'{"soundtrack": "g"}': "storage: Field required",
        newer: "report_schema: schema 2; this version reads schema 1",
        json.dumps(escaping).encode(): "tracks.0.files.0.key: file key 'g/../../etc/passwd'",
        json.dumps(absolute).encode(): "tracks.0.files.0.key: file key '/etc/passwd'",
        json.dumps(named).encode(): "tracks.0.files.0.sha256: String should match pattern",
        json.dumps(hidden).encode(): "names a hidden file (its records), not a track's",
        endless: "tracks.0.files.0.duration_s: Input should be a finite number",
        json.dumps({**good, "created_at": "not a date"}).encode(): "'not a date' is no ISO",
        json.dumps({**good, "created_at": "2026-12-06T12:18:10"}).encode(): "has no time zone",
        json.dumps({**good, "created_at": "9999-12-31T23:59:59-23:59"}).encode(): "is no ISO",
    }
    assert b'"duration_s": Infinity' in endless
    for data, message in cases.items():
        with pytest.raises(LockUnreadable, match=re.escape(message)):
            parse_lock(data)


def test_index_keeps_serving_the_last_approved_files() -> None:
    from soundtrack.publish import index_of

    previous = BuildReport(
        soundtrack="game",
        storage="x",
        tracks=[
            track_record(make_spec(id="a", seed=1), "approved", files=[FILE]),
            track_record(make_spec(id="b", seed=1), "approved", files=[FILE]),
            track_record(make_spec(id="gone"), "approved", files=[FILE]),
        ],
    )
    now = BuildReport(
        soundtrack="game",
        storage="x",
        tracks=[
            track_record(make_spec(id="a", seed=2), "approved", files=[FILE]),
            track_record(make_spec(id="b", seed=2), "rejected", reason="loudness"),
            track_record(make_spec(id="new"), "failed", reason="NaN"),
        ],
    )
    index = index_of(now, previous, ["a", "b", "new", "left-out"])
    by_id = {t.id: t for t in index.tracks}
    assert by_id["a"] == now.tracks[0], "the new approval replaces the old one"
    kept = by_id["b"]
    assert kept.model_copy(update={"failed_rebuild": None}) == previous.tracks[1], (
        "a rejected rebuild keeps the last approved files"
    )
    assert kept.failed_rebuild is not None, "and says what became of it"
    assert (kept.failed_rebuild.status, kept.failed_rebuild.reason) == ("rejected", "loudness")
    assert kept.failed_rebuild.spec_hash == now.tracks[1].spec_hash
    assert by_id["new"].status == "failed"
    assert "gone" not in by_id and "left-out" not in by_id, "only tracks still in the manifest"
    assert index_of(now, None, ["b"]).tracks[0].status == "rejected"


def test_junit_says_a_gate_had_nothing_to_measure_instead_of_none() -> None:
    silent = GateResult("silence", None, ">= -70 LUFS", False, "fail")
    rejected = track_record(make_spec(id="quiet"), "rejected", gates=[silent], reason="silence")
    lock = BuildReport(soundtrack="game", storage="s3://bucket/x", tracks=[rejected])
    failure = ET.fromstring(to_junit(lock).split("\n", 1)[1]).find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "silence: nothing (limit >= -70 LUFS)"
    assert failure.text == "silence: measured nothing, limit >= -70 LUFS"


def test_the_summary_shows_every_status_at_a_ci_logs_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A track id of the schema's 64 characters took the whole width: no status could be read
    ("appro…", or nothing) in a CI log; folding it then split short ids ("victory-stin")."""
    from soundtrack.cli import _print_report

    long_id = "boss-storm-leviathan-" + "x" * 43
    statuses = {long_id: "approved", "victory-sting": "rejected", "theme": "cached"}
    reason = "loudness: -31.2 LUFS, limit -24 ± 1 (the render is too quiet)"
    report = BuildReport(
        soundtrack="sky",
        storage="./out",
        tracks=[
            TrackRecord(
                id=track_id,
                status=status,  # type: ignore[arg-type]
                spec_hash="a" * 64,
                reason=reason if status == "rejected" else None,
                files=[]
                if status == "rejected"
                else [FILE, FILE.model_copy(update={"format": "mp3"})],
                gates=[
                    GateResult(
                        name="loudness", value=-24.0, limit="x", passed=True, severity="fail"
                    )
                ],
            )
            for track_id, status in statuses.items()
        ],
    )
    # Through the environment, as a CI job's: setting the console's width fixed it at its old
    # value for every later test in the process (COLUMNS was then read no more).
    monkeypatch.setenv("COLUMNS", "80")
    _print_report(report)
    rows = [line.split("│")[1:3] for line in capsys.readouterr().out.splitlines()]
    rows = [[cell.strip() for cell in row] for row in rows if len(row) == 2]
    assert "".join(track for track, _ in rows) == "".join(statuses), rows  # folded, not cut
    assert [status for _, status in rows if status] == list(statuses.values()), rows
    assert ["victory-sting", "rejected"] in rows, "a short id keeps its line"


def test_the_summary_tells_the_takes_of_this_builds_tracks_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fully cached rebuild printed "title-theme: take 1 passed (seed 1234)" under "3
    cached", as if it had rendered: a cached track's takes are its lock's history."""
    from soundtrack.cli import _print_report

    takes = [TakeRecord(take=0, seed=1234, status="approved")]
    report = BuildReport(
        soundtrack="sky",
        storage="./out",
        tracks=[
            TrackRecord(id=track_id, status=status, spec_hash="a" * 64, files=[FILE], takes=takes)  # type: ignore[arg-type]
            for track_id, status in (("theme", "cached"), ("sting", "approved"))
        ],
    )
    _print_report(report)
    said = capsys.readouterr().out
    assert "sting: take 1 passed (seed 1234)" in said and "theme: take" not in said, said


def test_the_summary_writes_out_what_a_reason_or_warning_quotes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reason quotes a file name or a library's error: its row printed an escape sequence
    raw, and [/] in it would have been Rich markup (a traceback after publishing, no report)."""
    from soundtrack.cli import _print_report

    quoted = "cannot read x[/]y.wav \x1b[31m"
    report = BuildReport(
        soundtrack="sky",
        storage="./out",
        tracks=[TrackRecord(id="a", status="failed", spec_hash="a", reason=quoted)],
        warnings=[quoted],
    )
    _print_report(report)
    said = capsys.readouterr()
    assert "\x1b" not in said.out + said.err, repr(said)
    # The reason's cell, folded over lines at the terminal's width.
    cells = [line.split("│")[-2] for line in said.out.splitlines() if line.startswith("│")]
    assert "cannotreadx[/]y.wav\\x1b[31m" in "".join(cells).replace(" ", ""), said.out
    assert "warning: cannot read x[/]y.wav \\x1b[31m" in " ".join(said.err.split())


def test_junit_stays_xml_when_a_reason_holds_control_characters() -> None:
    """A reason quoting an error with ESC or a form feed wrote XML no JUnit reader parses."""
    report = BuildReport(
        soundtrack="sky",
        storage="./out",
        tracks=[
            TrackRecord(id="a", status="failed", spec_hash="a", reason="ffmpeg said \x1b[31m\x0c"),
            TrackRecord(id="b", status="rejected", spec_hash="b", reason="bell \x07"),
        ],
    )
    suite = ET.fromstring(to_junit(report).encode())
    messages = [e.get("message") for e in suite.iter() if e.tag in ("error", "failure")]
    assert messages == ["ffmpeg said \\x1b[31m\\x0c", "bell \\x07"]


def test_junit_says_what_became_of_a_tracks_stems() -> None:
    """Rejected stems leave their track approved: a CI reading only the JUnit file sees them."""
    sum_gate = GateResult("stems_sum", 3.0, ">= 20 dB below the mix", False, "fail")
    stems = [
        StemRecord(name="drums", status="published"),
        StemRecord(name="vocals", status="rejected", reason="stems_sum: 3.0", gates=[sum_gate]),
    ]
    track = track_record(make_spec(id="a"), "approved", files=[FILE])
    lock = BuildReport(
        soundtrack="game", storage="./x", tracks=[track.model_copy(update={"stems": stems})]
    )
    suite = ET.fromstring(to_junit(lock).encode())
    out = suite.findtext("testcase/system-out") or ""
    assert "stems: drums published; vocals rejected; vocals: stems_sum: 3.0" in out.splitlines()
    assert suite.find("testcase/failure") is None, "the mix was published: the track passed"


def test_each_rejected_stem_is_named_beside_its_own_reason() -> None:
    """The reasons were sorted apart from their stems: drums read as rejected for other's peak."""
    stems = [
        StemRecord(name="drums", status="rejected", reason="true_peak_ogg: 2.31"),
        StemRecord(name="bass", status="published"),
        StemRecord(name="other", status="rejected", reason="true_peak_ogg: 0.45"),
    ]
    track = track_record(make_spec(id="a"), "approved", files=[FILE])
    summary = track.model_copy(update={"stems": stems}).stems_summary()
    assert summary == (
        "drums, other rejected; bass published; "
        "drums: true_peak_ogg: 2.31; other: true_peak_ogg: 0.45"
    )
    shared = [StemRecord(name=name, status="rejected", reason="stems_sum: 3.0") for name in "ab"]
    summary = track.model_copy(update={"stems": shared}).stems_summary()
    assert summary == "a, b rejected; a, b: stems_sum: 3.0"


# The lock's fields and their types at each schema. A version refuses a lock with fields it does
# not know (written back, it would lose them), and reads its own schema's strictly: a field added,
# dropped or retyped without a bump reads, to the version before, as an edited lock.
LOCK_FIELDS_SHA256 = {1: "e48b300c2016db020a38b45e4e4dca1a475cfa991869c0d2fc54e0141d94f844"}


def _lock_fields() -> list[str]:
    """Every field of the lock, and of the records in it, with its type."""
    seen: set[type] = set()
    todo: list[type] = [BuildReport]
    fields: list[str] = []
    while todo:
        record = todo.pop()
        if record in seen:
            continue
        seen.add(record)
        hints = typing.get_type_hints(record)
        if issubclass(record, BaseModel):
            names = list(record.model_fields)
        else:
            names = [f.name for f in dataclasses.fields(record)]
        for name in names:
            fields.append(f"{record.__name__}.{name}: {_named(hints[name])}")
            stack = [hints[name]]
            while stack:
                inner = stack.pop()
                if isinstance(inner, type) and (
                    issubclass(inner, BaseModel) or dataclasses.is_dataclass(inner)
                ):
                    todo.append(inner)
                stack.extend(typing.get_args(inner))
    return sorted(fields)


def _named(kind: Any) -> str:
    """A type in words that read alike on every Python version (their reprs do not)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is None:
        return kind.__name__ if isinstance(kind, type) else repr(kind)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (typing.Union, types.UnionType):
        return f"Union[{', '.join(sorted(map(_named, args)))}]"
    return f"{origin.__name__}[{', '.join(map(_named, args))}]"


def test_a_change_to_the_locks_fields_bumps_its_schema() -> None:
    fields = "\n".join(_lock_fields())
    assert "GateResult.value" in fields and "FailedRebuild.reason" in fields
    assert hashlib.sha256(fields.encode()).hexdigest() == LOCK_FIELDS_SHA256[REPORT_SCHEMA], (
        "the lock's fields changed: bump REPORT_SCHEMA (soundtrack/report.py) and record their "
        f"sha256 here for it; earlier schemas' locks must still read:\n{fields}"
    )
