"""scripts/lock_to_junit.py: a CI job's JUnit report from the lock its deployed build published."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import soundfile as sf

from soundtrack.gates import GateResult
from soundtrack.report import BuildReport, TrackRecord

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lock_to_junit.py"


def lock(tmp_path: Path, created_at: str, build_name: str | None = None) -> Path:
    silence = GateResult(name="silence", value=-31.0, limit=">= -20", passed=False, severity="fail")
    report = BuildReport(
        soundtrack="sky",
        storage="s3://bucket/game",
        created_at=created_at,
        build_name=build_name,
        tracks=[
            TrackRecord(id="title", status="approved", spec_hash="a" * 64),
            TrackRecord(
                id="sting", status="rejected", spec_hash="b" * 64, reason="silence", gates=[silence]
            ),
        ],
    )
    path = tmp_path / "soundtrack.lock.json"
    path.write_text(report.to_json())
    return path


def convert(
    lock_path: Path, junit: Path, not_before: str, *more: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(lock_path),
            str(junit),
            "--not-before",
            not_before,
            *more,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_fresh_lock_becomes_one_testcase_per_track(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    done = convert(lock(tmp_path, "2026-11-22T03:10:00+00:00"), junit, "2026-11-22T03:00:00Z")
    assert done.returncode == 0, done.stderr
    suite = ET.parse(junit).getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"title", "sting"}
    assert cases["title"].find("failure") is None
    assert cases["sting"].find("failure") is not None


def test_a_lock_older_than_the_job_is_refused(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    done = convert(lock(tmp_path, "2026-11-21T02:00:00+00:00"), junit, "2026-11-22T03:00:00Z")
    assert done.returncode == 1
    assert "earlier build" in done.stderr and not junit.exists()


def test_a_lock_of_an_unreadable_time_or_no_lock_at_all_is_one_line(tmp_path: Path) -> None:
    """A hand-edited created_at crashed the script in a traceback (ValueError, TypeError
    comparing a time of no zone, OverflowError), and so did a lock path with no file."""
    for written in ("not a date", "2026-11-22T03:10:00", "9999-12-31T23:59:59-23:59"):
        path = lock(tmp_path, "2026-11-22T03:10:00+00:00")
        path.write_text(path.read_text().replace("2026-11-22T03:10:00+00:00", written))
        done = convert(path, tmp_path / "j.xml", "2026-11-22T03:00:00Z")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"{path} is not a readable soundtrack lock file: " in done.stderr
    done = convert(tmp_path / "none.json", tmp_path / "j.xml", "2026-11-22T03:00:00Z")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == f"cannot read {tmp_path / 'none.json'}: No such file or directory\n"
    assert not (tmp_path / "j.xml").exists()


def test_a_time_without_offset_is_refused(tmp_path: Path) -> None:
    done = convert(lock(tmp_path, "2026-11-22T03:10:00+00:00"), tmp_path / "j.xml", "2026-11-22")
    assert done.returncode == 2 and "UTC offset" in done.stderr


def test_a_lock_another_run_wrote_meanwhile_is_refused(tmp_path: Path) -> None:
    """The nightly build published while this job's build found the storage busy."""
    junit = tmp_path / "junit.xml"
    written = lock(tmp_path, "2026-11-22T03:10:00+00:00", build_name="nightly-2026-11-22")
    done = convert(written, junit, "2026-11-22T03:00:00Z", "--build-name", "ci-1234abcd-77-1")
    assert done.returncode == 1
    assert "'nightly-2026-11-22'" in done.stderr and "another build's" in done.stderr
    assert not junit.exists()
    done = convert(written, junit, "2026-11-22T03:00:00Z", "--build-name", "nightly-2026-11-22")
    assert done.returncode == 0, done.stderr
    unnamed = lock(tmp_path, "2026-11-22T03:10:00+00:00")  # a CLI build's
    done = convert(unnamed, junit, "2026-11-22T03:00:00Z", "--build-name", "ci-1234abcd-77-1")
    assert done.returncode == 1 and "a run with no name" in done.stderr


def test_a_track_whose_rebuild_was_rejected_is_a_failure_though_its_old_files_stay(
    tmp_path: Path,
) -> None:
    """The lock keeps serving a track's last approved files when its rebuild is rejected: the
    JUnit made from it showed the track passing, with its old files, on the build that broke
    it."""
    from soundtrack.build import Options, ThreadExecutor, build
    from tests.signals import music_like

    music = music_like(3.0, 44100, seed=1)
    sf.write(tmp_path / "theme.wav", music.T, 44100, subtype="FLOAT")
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: sky\nstorage: ./out\ndefaults: {formats: [ogg]}\n"
        "tracks:\n  - id: theme\n    source: theme.wav\n"
    )
    junit = tmp_path / "junit.xml"
    lock_path = tmp_path / "out" / "sky" / "soundtrack.lock.json"

    def cases() -> dict[str, ET.Element]:
        done = convert(lock_path, junit, "2026-01-01T00:00:00Z")
        assert done.returncode == 0, done.stderr
        return {case.get("name", ""): case for case in ET.parse(junit).getroot().iter("testcase")}

    assert build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor()).exit_status == 0
    served = json.loads(lock_path.read_text())["tracks"][0]["files"]
    sf.write(tmp_path / "theme.wav", music.T * 1e-6, 44100, subtype="FLOAT")  # near silence
    assert build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor()).exit_status == 1
    (entry,) = json.loads(lock_path.read_text())["tracks"]
    assert entry["files"] == served and entry["failed_rebuild"]["status"] == "rejected"
    theme = cases()["theme"]
    assert theme.find("failure") is not None, ET.tostring(theme)
    page = (tmp_path / "out" / "sky" / "review.html").read_text()
    assert "<dt>last build</dt><dd>rejected: " in page
    # The recording back as it was: its served take is the manifest's again, and passes.
    sf.write(tmp_path / "theme.wav", music.T, 44100, subtype="FLOAT")
    assert build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor()).exit_status == 0
    (entry,) = json.loads(lock_path.read_text())["tracks"]
    assert "failed_rebuild" not in entry  # left out when unset: older versions read the lock
    assert cases()["theme"].find("failure") is None
