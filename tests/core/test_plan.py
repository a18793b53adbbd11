"""Planning: what a rebuild reuses, what it renders, and how tracks are batched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from soundtrack.errors import InputError
from soundtrack.hashing import file_sha256
from soundtrack.plan import batch, plan_build, select
from soundtrack.publish import track_record
from soundtrack.report import BuildReport, FileRecord, SidecarRecord
from soundtrack.spec import Sampling, TrackSpec
from soundtrack.storage import LocalStorage
from tests.specs import make_file, make_spec


def published(storage: LocalStorage, spec_id: str, spec_hash: str, body: bytes) -> FileRecord:
    path = storage.root / "test" / f"{spec_id}.ogg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return make_file(f"test/{spec_id}.ogg", body, uri=path.as_uri(), duration_s=10.0)


def sidecar_of(storage: LocalStorage, spec_id: str) -> SidecarRecord:
    path = storage.root / "test" / f"{spec_id}.json"
    path.write_text("{}")
    return SidecarRecord(
        key=f"test/{spec_id}.json", uri=path.as_uri(), sha256=file_sha256(path), bytes=2
    )


def lock_of(storage: LocalStorage, *specs: TrackSpec, status: str = "approved") -> BuildReport:
    records = []
    for spec in specs:
        file = published(storage, spec.id, spec.spec_hash, spec.id.encode())
        record = track_record(spec, status, files=[file])
        records.append(record.model_copy(update={"sidecar": sidecar_of(storage, spec.id)}))
    return BuildReport(soundtrack="test", storage=str(storage.root), tracks=records)


def test_only_a_variation_whose_parent_was_never_published_is_refused_before_rendering(
    tmp_path: Path,
) -> None:
    """Such a build rendered, published a lock with the variation failed and exited 1."""
    storage = LocalStorage("out", tmp_path)
    theme = make_spec(id="theme", formats=("ogg",))
    chase = make_spec(id="chase", formats=("ogg",), variation_of="theme")
    finale = make_spec(id="finale", formats=("ogg",), variation_of="chase")
    specs = [theme, chase, finale]
    for only, lock in ((["chase"], None), (["finale", "theme"], lock_of(storage, theme))):
        with pytest.raises(InputError) as refused:
            plan_build(specs, lock, storage, only=only)
        variation, parent = ("chase", "theme") if only == ["chase"] else ("finale", "chase")
        assert str(refused.value) == (
            f"--only selects {variation} (a variation of {parent}), whose parent is neither "
            "selected nor published here: select the parent too (--only PARENT)"
        )
    # Selected, or published before: the parent's audio is there to render from.
    assert plan_build(specs, None, storage, only=["theme", "chase"]).variations
    assert plan_build(specs, lock_of(storage, theme), storage, only=["chase"]).variations
    # A parent the lock lists as rejected or failed was never published: it passed this check,
    # and the build failed the variation, saying its parent was not "as the manifest has it".
    for status in ("rejected", "failed"):
        with pytest.raises(InputError, match="neither selected nor published"):
            plan_build(specs, lock_of(storage, theme, status=status), storage, only=["chase"])


def test_the_progress_counts_no_variation_only_left_out(tmp_path: Path) -> None:
    """--only theme counted its two variations: the progress ended at 1/3."""
    storage = LocalStorage("out", tmp_path)
    theme = make_spec(id="theme", formats=("ogg",))
    chase = make_spec(id="chase", formats=("ogg",), variation_of="theme")
    finale = make_spec(id="finale", formats=("ogg",), variation_of="chase")
    plan = plan_build([theme, chase, finale], None, storage, only=["theme"])
    assert plan.total == 1 and plan.left_out == {"chase", "finale"}
    assert plan_build([theme, chase, finale], None, storage, only=["theme", "chase"]).total == 2


def test_published_tracks_are_cached_and_the_rest_batched(tmp_path: Path) -> None:
    storage = LocalStorage("out", tmp_path)
    done = make_spec(id="done", formats=("ogg",))
    new = make_spec(id="new", formats=("ogg",))
    plan = plan_build([done, new], lock_of(storage, done), storage)
    assert [r.id for r in plan.cached] == ["done"] and plan.cached[0].status == "cached"
    assert [[s.id for s in b] for b in plan.batches] == [["new"]]


def test_a_track_without_its_sidecar_is_published_again(tmp_path: Path) -> None:
    storage = LocalStorage("out", tmp_path)
    old, gone = make_spec(id="old", formats=("ogg",)), make_spec(id="gone", formats=("ogg",))
    lock = lock_of(storage, old, gone)
    # A lock written before sidecars existed, and a sidecar deleted from the folder.
    lock.tracks[0] = lock.tracks[0].model_copy(update={"sidecar": None})
    (storage.root / "test" / "gone.json").unlink()
    plan = plan_build([old, gone], lock, storage)
    assert plan.cached == [] and [s.id for b in plan.batches for s in b] == ["gone", "old"]


def test_changed_spec_missing_or_altered_file_is_rebuilt(tmp_path: Path) -> None:
    storage = LocalStorage("out", tmp_path)
    a, b, c = (make_spec(id=name, formats=("ogg",)) for name in "abc")
    lock = lock_of(storage, a, b, c)
    (storage.root / "test" / "b.ogg").unlink()
    (storage.root / "test" / "c.ogg").write_bytes(b"tampered")
    changed_a = make_spec(id="a", formats=("ogg",), seed=99)
    plan = plan_build([changed_a, b, c], lock, storage)
    assert plan.cached == []
    assert sorted(s.id for s in plan.todo) == ["a", "b", "c"]


def test_force_and_only(tmp_path: Path) -> None:
    storage = LocalStorage("out", tmp_path)
    a, b = make_spec(id="a", formats=("ogg",)), make_spec(id="b", formats=("ogg",))
    lock = lock_of(storage, a, b)
    forced = plan_build([a, b], lock, storage, only=["a"], force=True)
    assert [s.id for s in forced.todo] == ["a"] and [r.id for r in forced.cached] == ["b"]
    # A track outside --only that is not published stays out of the build entirely.
    fresh = make_spec(id="c", formats=("ogg",))
    plan = plan_build([a, fresh], lock, storage, only=["a"])
    assert [r.id for r in plan.cached] == ["a"] and plan.todo == []
    with pytest.raises(InputError, match="not in the manifest: nope"):
        select([a, b], ["nope"])


def test_rejected_tracks_are_never_reused(tmp_path: Path) -> None:
    storage = LocalStorage("out", tmp_path)
    a = make_spec(id="a", formats=("ogg",))
    plan = plan_build([a], lock_of(storage, a, status="rejected"), storage)
    assert plan.cached == [] and [s.id for s in plan.todo] == ["a"]


def test_batches_group_settings_and_similar_lengths() -> None:
    hot = Sampling(temperature=1.3)
    specs = [
        make_spec(id="long", duration_s=60.0),
        make_spec(id="short", duration_s=5.0),
        make_spec(id="mid", duration_s=20.0),
        make_spec(id="hot", duration_s=5.0, sampling=hot),
        make_spec(id="other-model", duration_s=5.0, model="other"),
    ]
    groups = [[s.id for s in b] for b in batch(specs, batch_size=2)]
    assert groups == [["short", "mid"], ["long"], ["hot"], ["other-model"]]


def test_recordings_are_processed_not_rendered(tmp_path: Path) -> None:
    recording = make_spec(id="rec", source=tmp_path / "rec.wav")
    plan = plan_build([recording], None, LocalStorage("out", tmp_path))
    assert [s.id for s in plan.recordings] == ["rec"] and plan.batches == []


def test_planning_imports_neither_yaml_nor_boto3() -> None:
    # A fresh interpreter: this test session imported both long ago.
    probe = (
        "import sys, soundtrack.plan; "
        "print(' '.join(m for m in ('yaml', 'boto3', 'botocore') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert run.stdout.strip() == ""


def test_the_model_variations_use_renders_last(tmp_path: Path) -> None:
    """One model resident at a time (a GPU): the batches of the model the variations render
    with come after every other model's, so parents and variations share its one load."""
    theme = make_spec(id="theme", model="ace")
    other = make_spec(id="other", model="musicgen")
    sting = make_spec(id="sting", model="ace", variation_of="theme")
    plan = plan_build([theme, other, sting], None, LocalStorage("out", tmp_path))
    assert [[s.id for s in b] for b in plan.batches] == [["other"], ["theme"]]
    assert [s.id for s in plan.variations] == ["sting"]
    plain = plan_build([theme, other], None, LocalStorage("out", tmp_path))
    assert [[s.id for s in b] for b in plain.batches] == [["theme"], ["other"]], "manifest order"
