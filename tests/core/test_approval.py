"""The approval step on the core build, with a reviewer written here: one review of every take
the build rendered, with the soundtrack's storage let go while it waits; a variation renders
from its parent's take under review, and a rejected parent takes its variations with it."""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack import models
from soundtrack.approval import Candidate, Verdict
from soundtrack.build import Options, ThreadExecutor, build
from soundtrack.cli import app
from soundtrack.errors import InputError
from soundtrack.publish import changed_since
from soundtrack.report import BuildReport, TrackRecord, parse_lock
from soundtrack.review import review_page
from soundtrack.storage import open_storage
from tests.reference import sha256_of
from tests.signals import music_like
from tests.specs import make_file


def manifest(model: Path, storage: str = "./out") -> str:
    return f"""\
schema: 1
soundtrack: vary
storage: {storage}
review: required
defaults: {{model: {model}, formats: [ogg], duration: 2}}
tracks:
  - id: title-theme
    prompt: heroic title theme, horns
  - id: menu
    prompt: calm menu pads
  - id: combat-high
    prompt: fast combat version, drums
    variation_of: title-theme
    gates: {{theme: warn}}  # the tiny model renders noise: no melody to share
"""


@pytest.fixture(params=["folder", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[], list[str]]]:
    """The manifest's storage, and a listing of every published file name in it."""
    if request.param == "folder":
        out = tmp_path / "out"
        return "./out", lambda: sorted(p.name for p in out.rglob("*") if p.is_file())
    bucket = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("s3_env").client()

    def listing() -> list[str]:
        found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(item["Key"].rpartition("/")[2] for item in found)

    return f"s3://{bucket}/games", listing


def test_one_review_of_every_take_with_the_storage_let_go_and_a_rejected_parent_takes_its_variation(
    tmp_path: Path, tiny_acestep_dir: Path, where: tuple[str, Callable[[], list[str]]]
) -> None:
    url, listing = where
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir, url))
    asked: list[list[str]] = []

    def reviewer(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        asked.append([c.spec.id for c in candidates])
        # Another build could take the storage now: this one let go of it while it waits,
        # and nothing of the takes is in the storage yet.
        storage = open_storage(url, base_dir=tmp_path)
        with storage.hold("vary", wait_s=0, on_wait=print):
            pass
        assert not [name for name in listing() if name.endswith(".ogg")]
        # The variation rendered from the parent's staged take, the file that would publish.
        theme, combat = (c for c in candidates if c.spec.id in ("title-theme", "combat-high"))
        (ogg,) = theme.outcome.files
        assert combat.spec.parent_audio is not None
        assert combat.spec.parent_audio.sha256 == ogg.sha256
        return {
            "title-theme": Verdict(False, "the horns are too loud"),
            "menu": Verdict(True, "approved by alice: <warm> pads"),
            "combat-high": Verdict(True),
        }

    models._loaded.clear()
    result = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=reviewer)

    assert result.exit_status == 1  # a track was rejected
    assert len(asked) == 1 and sorted(asked[0]) == ["combat-high", "menu", "title-theme"]
    lock = json.loads(open_storage(url, base_dir=tmp_path).read_index("vary") or b"{}")
    tracks = {t["id"]: t for t in lock["tracks"]}
    assert {t: r["status"] for t, r in tracks.items()} == {
        "title-theme": "rejected",
        "menu": "approved",
        "combat-high": "rejected",
    }
    assert tracks["title-theme"]["reason"] == "rejected in review: the horns are too loud"
    assert "its parent 'title-theme' was rejected" in tracks["combat-high"]["reason"]
    # The approval is kept with its comment, and the page shows both verdicts.
    assert tracks["menu"]["approved_in_review"] == {
        "take": 0,
        "seed": tracks["menu"]["seed"],
        "comment": "approved by alice: <warm> pads",
    }
    page = review_page(parse_lock(json.dumps(lock).encode()), folder="")
    assert "<dd>take 1 approved: approved by alice: &lt;warm&gt; pads</dd>" in page
    assert "<dd>take 1 rejected: the horns are too loud</dd>" in page
    # Only the approved track's files were published (S3 names objects by content: by suffix).
    published = [name for name in listing() if name.endswith((".ogg", ".png"))]
    assert len(published) == 2, published  # menu's ogg and picture


def test_a_core_build_cannot_ask_for_a_review_without_a_reviewer(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))
    with pytest.raises(InputError, match="review: required needs"):
        build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor())
    assert not (tmp_path / "out" / "vary").exists()


def approve_all(
    candidates: Sequence[Candidate], staging: Path, timeout_s: float
) -> Mapping[str, Verdict]:
    return {c.spec.id: Verdict(True) for c in candidates}


def test_a_track_published_by_another_build_during_the_review_stays_as_that_build_left_it(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """The reviewed build reused `menu`; meanwhile another build published it anew. The lock
    kept the reviewed build's older entry, naming a file no longer there."""
    text = manifest(tiny_acestep_dir)
    (tmp_path / "m.yaml").write_text(text)
    models._loaded.clear()
    first = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approve_all)
    assert first.exit_status == 0, first.failure
    (tmp_path / "m.yaml").write_text(text + "  - id: sting\n    prompt: victory sting\n")
    edited = text.replace("review: required\n", "").replace("calm menu pads", "dark menu pads")
    (tmp_path / "other.yaml").write_text(edited)

    def reviewer(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        other = build(tmp_path / "other.yaml", Options(), executor=ThreadExecutor())
        assert [r.status for r in other.report.tracks if r.id == "menu"] == ["approved"]
        return approve_all(candidates, staging, timeout_s)

    models._loaded.clear()
    second = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=reviewer)
    assert second.exit_status == 0, second.failure
    folder = tmp_path / "out" / "vary"
    tracks = {
        t["id"]: t for t in json.loads((folder / "soundtrack.lock.json").read_text())["tracks"]
    }
    assert set(tracks) == {"title-theme", "menu", "combat-high", "sting"}
    for track in tracks.values():
        for entry in track["files"]:
            assert sha256_of(folder / entry["key"].rpartition("/")[2]) == entry["sha256"], track[
                "id"
            ]
    assert tracks["menu"]["prompt"] == "dark menu pads"


def test_what_another_build_published_during_the_review_is_not_published_over(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """While the reviewed build waited, another built a newer manifest: `menu` anew, without
    `combat-high`, with `credits`. Resumed, the reviewed build put its older plan back: its
    take of menu over the newer one, combat-high back in (its files could be gc'd by then),
    credits out."""
    text = manifest(tiny_acestep_dir)
    (tmp_path / "m.yaml").write_text(text)
    models._loaded.clear()
    first = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approve_all)
    assert first.exit_status == 0, first.failure
    ours = text.replace("calm menu pads", "bright menu pads")
    (tmp_path / "m.yaml").write_text(ours + "  - id: sting\n    prompt: victory sting\n")
    theirs = text.replace("review: required\n", "").replace("calm menu pads", "dark menu pads")
    theirs = theirs.split("  - id: combat-high")[0] + "  - id: credits\n    prompt: credits\n"
    (tmp_path / "other.yaml").write_text(theirs)
    asked: list[str] = []

    def reviewer(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        asked.extend(c.spec.id for c in candidates)
        other = build(tmp_path / "other.yaml", Options(), executor=ThreadExecutor())
        assert other.exit_status == 0, other.failure
        return approve_all(candidates, staging, timeout_s)

    models._loaded.clear()
    second = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=reviewer)
    assert sorted(asked) == ["menu", "sting"]
    assert second.exit_status == 1
    records = {r.id: r for r in second.report.tracks}
    assert records["menu"].status == "failed"
    assert records["menu"].reason == (
        "another build published menu while this build waited for its review: this take is "
        "not published over it (build again to review against what it published)"
    )
    assert records["sting"].status == "approved"
    assert second.report.warnings == [
        "another build published while this one waited for review: the lock keeps its "
        "entries of combat-high, credits, menu"
    ]
    folder = tmp_path / "out" / "vary"
    lock = json.loads((folder / "soundtrack.lock.json").read_text())
    tracks = {t["id"]: t for t in lock["tracks"]}
    assert set(tracks) == {"title-theme", "menu", "sting", "credits"}
    assert tracks["menu"]["prompt"] == "dark menu pads"
    for track in tracks.values():
        for entry in track["files"]:
            assert sha256_of(folder / entry["key"].rpartition("/")[2]) == entry["sha256"], track[
                "id"
            ]


def test_a_take_another_builds_reviewer_rejected_meanwhile_is_not_published(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """Two builds asked about the same take of menu: one reviewer rejected it, then the other
    approved it, and the take was published, with no word, beside the rejection in the lock.
    The verdict given first stands, as a publication does."""
    text = manifest(tiny_acestep_dir)
    (tmp_path / "m.yaml").write_text(text)
    models._loaded.clear()
    first = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approve_all)
    assert first.exit_status == 0, first.failure
    (tmp_path / "m.yaml").write_text(text.replace("calm menu pads", "bright menu pads"))

    def rejects_menu(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        return {c.spec.id: Verdict(c.spec.id != "menu", "B says no") for c in candidates}

    def approves_after_the_other(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        other = build(
            tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=rejects_menu
        )
        assert [r.status for r in other.report.tracks if r.id == "menu"] == ["rejected"]
        return {c.spec.id: Verdict(True, "A says yes") for c in candidates}

    models._loaded.clear()
    second = build(
        tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approves_after_the_other
    )
    assert second.exit_status == 1
    records = {r.id: r for r in second.report.tracks}
    assert records["menu"].status == "failed"
    assert records["menu"].reason == (
        "another build's reviewer rejected a take of menu while this build waited for its "
        "review: that verdict stands and this take is not published (build again to review the "
        "next take)"
    )
    assert second.report.warnings == [
        "another build's reviewer rejected takes while this one waited for review: the lock "
        "keeps its verdicts on menu"
    ]
    lock = json.loads((tmp_path / "out" / "vary" / "soundtrack.lock.json").read_text())
    menu = next(t for t in lock["tracks"] if t["id"] == "menu")
    assert menu["prompt"] == "calm menu pads"  # the first build's take is still served
    assert [r["comment"] for r in menu["rejected_in_review"]] == ["B says no"]
    assert (
        menu["approved_in_review"] is None or menu["approved_in_review"]["comment"] != "A says yes"
    )


def _entry(track_id: str, status: str, take: bytes = b"", **extra: Any) -> TrackRecord:
    files = [make_file(f"vary/{track_id}.{hashlib.sha256(take).hexdigest()[:8]}.ogg", take)]
    return TrackRecord(
        id=track_id, status=status, spec_hash="s", files=files if take else [], **extra
    )


def test_only_what_another_build_changed_in_what_the_lock_serves_is_theirs() -> None:
    """Any difference in a lock entry counted: a rebuild that failed again with another
    reason, or the same take published again, withheld the reviewed build's approved take."""
    planned = BuildReport(
        soundtrack="vary",
        storage="./out",
        tracks=[
            _entry("same", "approved", b"a"),
            _entry("failed-again", "failed", reason="silent"),
            _entry("republished", "approved", b"b"),
            _entry("taken-out", "approved", b"c"),
            _entry("reviewed", "approved", b"d"),
        ],
    )
    now = planned.model_copy(
        update={
            "tracks": [
                _entry("same", "cached", b"a"),  # reused by the other build
                _entry("failed-again", "failed", reason="clipped"),
                _entry("republished", "approved", b"B"),
                _entry("reviewed", "approved", b"d", approved_in_review=None, seed=3),
                _entry("added", "approved", b"e"),
            ]
        }
    )
    assert changed_since(planned, now) == {"republished", "taken-out", "added"}
    assert changed_since(None, now) == {"same", "republished", "reviewed", "added"}
    # A lock unreadable when the build resumed: nothing of it to keep over this build's.
    assert changed_since(planned, None) == set()


def test_a_track_left_out_by_only_keeps_its_takes_rejected_in_review(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """Left out of a build, a track never approved lost its record, and with it the takes a
    reviewer had rejected: the next build published the first of them."""
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))

    def reject_menu(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        return {c.spec.id: Verdict(c.spec.id != "menu", "too busy") for c in candidates}

    models._loaded.clear()
    build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=reject_menu)
    models._loaded.clear()
    only = Options(only=("title-theme",), force=True)
    build(tmp_path / "m.yaml", only, executor=ThreadExecutor(), reviewer=approve_all)
    lock = json.loads((tmp_path / "out" / "vary" / "soundtrack.lock.json").read_text())
    menu = next(t for t in lock["tracks"] if t["id"] == "menu")
    assert menu["status"] == "rejected" and len(menu["rejected_in_review"]) == 1


def test_a_take_rejected_in_review_stays_rejected_once_a_later_take_is_approved(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """Publishing the approved take dropped the takes rejected before it: a later render of the
    same spec (--force, or a build without review) published the first rejected take again."""
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))

    def reject_menu(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        return {c.spec.id: Verdict(c.spec.id != "menu", "too busy") for c in candidates}

    def menu() -> dict[str, Any]:
        lock = json.loads((tmp_path / "out" / "vary" / "soundtrack.lock.json").read_text())
        found: dict[str, Any] = next(t for t in lock["tracks"] if t["id"] == "menu")
        return found

    for _ in range(2):  # two takes rejected, in two builds
        models._loaded.clear()
        build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=reject_menu)
    rejected_seeds = [r["seed"] for r in menu()["rejected_in_review"]]
    assert len(set(rejected_seeds)) == 2
    models._loaded.clear()
    build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approve_all)
    approved = menu()
    assert approved["status"] == "approved" and approved["seed"] not in rejected_seeds
    assert [r["seed"] for r in approved["rejected_in_review"]] == rejected_seeds

    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir).replace("review: required\n", ""))
    models._loaded.clear()
    again = Options(only=("menu",), force=True)
    assert build(tmp_path / "m.yaml", again, executor=ThreadExecutor()).exit_status == 0
    rebuilt = menu()
    assert rebuilt["status"] == "approved" and rebuilt["seed"] == approved["seed"]
    assert [r["seed"] for r in rebuilt["rejected_in_review"]] == rejected_seeds


def test_every_record_of_a_spec_keeps_its_rejected_takes_whatever_became_of_it(
    tmp_path: Path,
) -> None:
    """A take after a rejected one that failed (a gate, a render error) was recorded without
    the rejections, so the build after it rendered the rejected take again. A variation failed
    with its parent is recorded under its spec before the parent's audio is part of it: a
    failure keeps them all."""
    from soundtrack.build import _Tracks
    from soundtrack.report import ReviewRejection

    rejected = [
        ReviewRejection(spec_hash="s", take=0, seed=7, comment="too busy"),
        ReviewRejection(spec_hash="other spec", take=0, seed=9),
    ]
    earlier = {"menu": _entry("menu", "rejected", rejected_in_review=rejected)}
    tracks = _Tracks(
        None,  # type: ignore[arg-type]  # finish() reads none of the build's inputs
        ThreadExecutor(),
        tmp_path,
        None,
        None,
        share_parents=False,
        reviewing=False,
        earlier=earlier,
        left_out=frozenset(),
        logger=logging.getLogger(__name__),
    )
    tracks.finish(_entry("menu", "failed", reason="clipped"))
    tracks.finish(_entry("new", "failed", reason="clipped"))
    assert tracks.records["menu"].rejected_in_review == rejected
    assert tracks.records["new"].rejected_in_review == []
    tracks.finish(_entry("menu", "approved", b"take 1"))
    assert tracks.records["menu"].rejected_in_review == rejected[:1]  # this spec's only


def test_a_reviewers_comment_reaches_terminals_and_logs_as_plain_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A comment with ESC sequences ran them in the terminal that printed the report; one
    holding a secret (pasted, or a Prefect variable the form filled in) published it."""
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    said = Verdict(
        False, f"\x1b[2J\x1b[31mtoo loud\x00\u202egnorw\nsee\ud800 bar\u20283 {secret} "
    ).comment
    assert not [c for c in said if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert said == "[2J [31mtoo loud gnorw see\ufffd bar 3 ***"


def test_takes_nobody_reviewed_are_reported_failed_and_nothing_is_published(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """The report of a build whose review timed out had no rows at all."""
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))

    def nobody(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict] | None:
        return None

    models._loaded.clear()
    result = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=nobody)
    assert result.failure is not None and result.failure.startswith("nobody answered the review")
    assert {r.id: r.status for r in result.report.tracks} == dict.fromkeys(
        ("title-theme", "menu", "combat-high"), "failed"
    )
    assert all(r.reason == result.failure and not r.files for r in result.report.tracks)
    assert not (tmp_path / "out" / "vary" / "soundtrack.lock.json").exists()


def test_a_take_the_reviewer_gave_no_verdict_is_rejected_not_published(
    tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """An answer for some takes, or under names that are no track's, approves nothing else."""
    (tmp_path / "m.yaml").write_text(manifest(tiny_acestep_dir))

    def some(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        return {"title-theme": Verdict(True), "Menu": Verdict(True), "combat": Verdict(True)}

    models._loaded.clear()
    result = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=some)
    reasons = {r.id: (r.status, r.reason) for r in result.report.tracks}
    assert reasons == {
        "title-theme": ("approved", None),
        "menu": ("rejected", "rejected in review: no answer"),
        "combat-high": ("rejected", "rejected in review: no answer"),
    }
    published = sorted(p.name for p in (tmp_path / "out" / "vary").glob("*.ogg"))
    assert published == ["title-theme.ogg"]


def test_a_recording_is_published_with_the_reviewed_takes_and_gc_cannot_take_it_meanwhile(
    tmp_path: Path,
    tiny_acestep_dir: Path,
    where: tuple[str, Callable[[], list[str]]],
) -> None:
    """A recording published before the review waited in no lock: a folder's staging dropped
    it when the build let go of the storage, and on S3 gc deleted it; the lock named files
    that were not there. Its variation still renders from it and is reviewed."""
    url, _ = where
    text = manifest(tiny_acestep_dir, url).replace(
        "  - id: combat-high\n", "  - id: jingle\n    source: rec.wav\n  - id: combat-high\n"
    )
    (tmp_path / "m.yaml").write_text(
        text.replace("variation_of: title-theme", "variation_of: jingle")
    )
    sf.write(tmp_path / "rec.wav", music_like(3.0, 32000, seed=1).T, 32000)
    models._loaded.clear()
    first = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor(), reviewer=approve_all)
    assert first.exit_status == 0, first.failure
    sf.write(tmp_path / "rec.wav", music_like(3.0, 32000, seed=2).T, 32000)  # published anew
    asked: list[str] = []

    def collecting(
        candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict]:
        asked.extend(c.spec.id for c in candidates)
        swept = url if url.startswith("s3://") else str(tmp_path / "out")
        gc = CliRunner().invoke(app, ["gc", swept, "--delete"])
        assert gc.exit_code == 0, gc.output
        return approve_all(candidates, staging, timeout_s)

    models._loaded.clear()
    second = build(
        tmp_path / "m.yaml", Options(force=True), executor=ThreadExecutor(), reviewer=collecting
    )
    assert second.exit_status == 0, second.failure
    assert sorted(asked) == ["combat-high", "menu", "title-theme"]
    storage = open_storage(url, base_dir=tmp_path)
    lock = json.loads(storage.read_index("vary") or b"{}")
    jingle = next(t for t in lock["tracks"] if t["id"] == "jingle")
    assert jingle["status"] == "approved" and jingle["files"]
    for entry in jingle["files"]:
        assert storage.has_asset(entry["key"], entry["sha256"]), entry["key"]
