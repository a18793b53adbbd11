"""The build's UI artifacts are its window, not its work: a server that stops taking them
(one gone away mid-build) costs one warning, never the build."""

from __future__ import annotations

import html
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from flows.artifacts import QC_REPORTS_KEPT, BuildArtifacts, _keep_last_runs
from soundtrack.report import BuildReport, FileRecord, PictureRecord, TakeRecord, TrackRecord
from tests.prefect_server import PrefectServer
from tests.running import run_artifacts
from tests.specs import make_file


def ogg_record(key: str, uri: str) -> FileRecord:
    """A published OGG's record (its numbers do not matter to the cards)."""
    return make_file(key, b"\0", uri=uri)


def test_artifacts_the_server_refuses_cost_one_warning_not_the_build(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow
    def build_whose_progress_card_is_gone() -> int:
        artifacts = BuildArtifacts(f"gone-{uuid.uuid4().hex[:8]}", 3)
        with get_client(sync_client=True) as client:
            client.delete_artifact(artifacts._progress)  # the server no longer has it
        for track in ("a", "b", "c"):
            artifacts.track_done(TrackRecord(id=track, status="approved", spec_hash="ab"))
        return artifacts.done

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        caplog.at_level(logging.WARNING),
    ):
        assert build_whose_progress_card_is_gone() == 3
        APILogHandler().flush()  # to this server: after the block there is none to send them to
    warnings = [r for r in caplog.records if "stops showing this build's progress" in r.message]
    assert len(warnings) == 1, [r.message for r in caplog.records]


def test_a_build_whose_lock_was_not_written_shows_nothing_published(
    prefect_server: PrefectServer,
) -> None:
    """The links artifact listed every approved file as published when the lock's write
    failed (or a publish did): no lock names them, on a folder they are not even there."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    record = TrackRecord(
        id="a",
        status="approved",
        spec_hash="ab",
        files=[ogg_record("s/a.ogg", "file:///out/s/a.ogg")],
    )
    report = BuildReport(soundtrack="s", storage="./out", model_loads=0, tracks=[record])

    @flow
    def build_whose_lock_failed() -> object:
        artifacts = BuildArtifacts("s", 1)
        artifacts.track_done(record)
        artifacts.finished(report, [], None, "writing the index failed: disk full")
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    from prefect.logging.handlers import APILogHandler

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        run_id = build_whose_lock_failed()
        APILogHandler().flush()
    artifacts = run_artifacts(prefect_server.api_url, run_id)
    (links,) = [a for a in artifacts if a.type == "markdown"]
    shown = html.unescape(rendered(str(links.data)))
    assert "Nothing published: writing the index failed: disk full" in shown
    assert "a.ogg" not in str(links.data) and links.description == "Not published"
    # The soundtrack's keyed cards stay the last build that published (docs/operations.md).
    assert [a.key for a in artifacts if a.type in ("markdown", "table")] == [None, None]


def test_the_progress_card_counts_every_status_not_the_last_tracks_alone(
    prefect_server: PrefectServer,
) -> None:
    """The card ended on "3/3 tracks finished (last: c, approved)": tracks rejected or failed
    before the last were never said."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow
    def build_of_three() -> object:
        artifacts = BuildArtifacts("s", 3)
        for track_id, status in (("a", "rejected"), ("b", "failed"), ("c", "approved")):
            artifacts.track_done(TrackRecord(id=track_id, status=status, spec_hash="ab"))
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        run_id = build_of_three()
        APILogHandler().flush()
    (progress,) = [a for a in run_artifacts(prefect_server.api_url, run_id) if a.type == "progress"]
    assert progress.data == 100.0
    assert progress.description == (
        "3/3 tracks finished: 1 approved, 1 failed, 1 rejected (last: c, approved)"
    )


def test_a_soundtracks_qc_reports_keep_its_last_runs_and_nothing_else_is_touched(
    tmp_path: Path,
) -> None:
    """A folder per run keeps each run's link to its own report; the oldest go, by age."""
    runs = [str(uuid.uuid4()) for _ in range(QC_REPORTS_KEPT + 3)]
    for age_s, run in enumerate(runs):  # runs[0] the newest
        (tmp_path / run).mkdir()
        (tmp_path / run / "index.html").write_text(run)
        os.utime(tmp_path / run, (1e9 - age_s, 1e9 - age_s))
    others = [tmp_path / "static", tmp_path / "index.html"]  # not a run's: the older layout's
    others[0].mkdir()
    others[1].write_text("old")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours")
    link = tmp_path / str(uuid.uuid4())  # named as a run, oldest of all: a link is no run
    link.symlink_to(elsewhere, target_is_directory=True)
    os.utime(link, (1.0, 1.0), follow_symlinks=False)
    others.append(link)
    _keep_last_runs(tmp_path, tmp_path / runs[0])
    assert sorted(p.name for p in tmp_path.iterdir() if p not in others) == sorted(
        runs[:QC_REPORTS_KEPT]
    )
    assert all(p.exists() for p in others) and (elsewhere / "keep").exists()


def test_each_qc_report_shares_the_page_assets_of_the_run_before_it(tmp_path: Path) -> None:
    """Every run's Data Docs carry the same 4 MB of fonts, scripts and styles: kept 20 times,
    80 MB per soundtrack. A file of the same bytes is one file; any other stays its own."""
    older, newer = (tmp_path / str(uuid.uuid4()) for _ in range(2))
    for age_s, run in enumerate((newer, older)):
        (run / "static" / "fonts").mkdir(parents=True)
        (run / "static" / "fonts" / "icons.woff").write_bytes(b"font" * 1000)
        (run / "static" / "styles.css").write_text(f"body {{ order: {age_s} }}")  # not alike
        (run / "index.html").write_text("the same page")  # not an asset: the run's own
        os.utime(run, (1e9 - age_s, 1e9 - age_s))
    _keep_last_runs(tmp_path, newer)
    font = Path("static", "fonts", "icons.woff")
    assert (newer / font).samefile(older / font)
    assert (newer / font).read_bytes() == b"font" * 1000
    assert not (newer / "static" / "styles.css").samefile(older / "static" / "styles.css")
    assert not (newer / "index.html").samefile(older / "index.html")
    assert (newer / "static" / "styles.css").read_text() == "body { order: 0 }"
    shutil.rmtree(older)  # the older run goes in its turn; the newer keeps every byte
    assert (newer / font).read_bytes() == b"font" * 1000
    assert sorted(p.name for p in (newer / "static").rglob("*")) == [
        "fonts",
        "icons.woff",
        "styles.css",
    ]


def test_a_track_the_lock_does_not_list_shows_no_file_as_published(
    prefect_server: PrefectServer,
) -> None:
    """A track this build reused while another build, meanwhile, took it out of the lock (its
    manifest has it no more) was linked under "Published assets": no lock names its files."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def track(track_id: str) -> TrackRecord:
        published = ogg_record(f"s/{track_id}.ogg", f"file:///out/s/{track_id}.ogg")
        return TrackRecord(id=track_id, status="cached", spec_hash="ab", files=[published])

    report = BuildReport(
        soundtrack="s", storage="./out", model_loads=0, tracks=[track("a"), track("b")]
    )
    index = report.model_copy(update={"tracks": [track("a")]})

    @flow
    def build_whose_track_left_the_lock() -> object:
        BuildArtifacts("s", 2).finished(report, [], index, None)
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        run_id = build_whose_track_left_the_lock()
        APILogHandler().flush()
    (links,) = [a for a in run_artifacts(prefect_server.api_url, run_id) if a.type == "markdown"]
    rows = [line for line in str(links.data).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| a | cached | [ogg](file:///out/s/a.ogg) |", "| b | cached | - |"], rows


# Written by a careless or hostile hand: a folder's name, a team's gate name, an error quoting them.
FOLDER = "/tmp/o](javascript:alert(1))|x\n\n<img src=x onerror=alert(1)>\n# HEAD `tick`"
GATE = "house|rule <img src=x onerror=alert(6)> [c](javascript:alert(6))"


def rendered(text: str) -> str:
    """`text` as HTML, by a CommonMark renderer with GFM tables that, as the Prefect UI's, keeps
    raw HTML; every link is kept, so a test sees the links text makes."""
    markdown = MarkdownIt("commonmark").enable("table")
    markdown.validateLink = lambda url: True
    return markdown.render(text)


def assert_inert(text: str, *written: str) -> None:
    """Rendered, `text` holds no HTML or heading of its own and links only to files and S3,
    and shows each of `written` as it was written (newlines written out)."""
    page = rendered(text)
    assert not re.search(r"<(img|script|h[2-6])\b", page), page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert all(href.startswith(("file:", "s3:", "https:")) for href in hrefs), hrefs
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))
    for value in written:
        assert value.replace("\n", "\\n") in shown, (value, shown)


def test_paths_reasons_and_gate_names_show_as_written_never_as_markup(
    prefect_server: PrefectServer,
) -> None:
    """A folder named `o](javascript:...)` made the picture's link text a javascript: link in
    the UI, and a newline in it an <img> and a heading; a team's gate name did as much in the
    table's cells, and a stop reason in the progress card."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    soundtrack = f"ui-{uuid.uuid4().hex[:8]}"
    ogg = Path(FOLDER, soundtrack, "a.ogg")
    png = ogg.with_suffix(".png")
    record = TrackRecord(
        id="a",
        status="approved",
        spec_hash="ab",
        reason=f"rejected by gates: {GATE} -23.581",
        takes=[
            TakeRecord(take=0, seed=3, status="rejected", rejected_by=[GATE]),
            TakeRecord(take=1, seed=4, status="approved"),
        ],
        files=[
            ogg_record(
                f"{soundtrack}/a.ogg",
                f"s3://bucket/a)[x](javascript:alert(2)) |b/{soundtrack}/a.ogg",
            )
        ],
        picture=PictureRecord(
            key=f"{soundtrack}/a.png",
            uri=png.as_uri(),
            sha256="0" * 64,
            bytes=1,
            width_px=1,
            height_px=1,
        ),
    )
    report = BuildReport(soundtrack=soundtrack, storage=FOLDER, model_loads=0, tracks=[record])
    unpublished = f"cannot replace files in {FOLDER}/{soundtrack}"

    @flow
    def build_of_hostile_text() -> object:
        published = BuildArtifacts(soundtrack, 1)
        published.finished(report, [], report, None)
        BuildArtifacts(soundtrack, 1).finished(report, [], None, unpublished)
        BuildArtifacts(soundtrack, 2).stopped(
            f"{FOLDER} is being built by <script>x</script> via https://ci:hunter22@proxy:3128"
        )
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        run_id = build_of_hostile_text()
        APILogHandler().flush()
    artifacts = run_artifacts(prefect_server.api_url, run_id)
    links = sorted(str(a.data) for a in artifacts if a.type == "markdown")
    assert len(links) == 2
    assert_inert(links[0], unpublished)  # "Nothing published: ..."
    assert_inert(links[1], str(png))
    table = rendered(links[1]).split("</table>")[0]
    assert table.count("<td>") == 3, "a track's row has its three cells, whatever its links say"
    (stopped,) = [a for a in artifacts if a.type == "progress" and "stopped" in str(a.description)]
    assert_inert(str(stopped.description), FOLDER, "<script>x</script>")
    assert "hunter22" not in str(stopped.description), "anyone on the server reads the card"
    for card in (a for a in artifacts if a.type == "table"):
        (row,) = card.data if isinstance(card.data, list) else __import__("json").loads(card.data)
        for column in ("reason", "takes"):
            assert_inert(str(row[column]), GATE)
