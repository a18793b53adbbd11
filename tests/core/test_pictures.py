"""The picture of a track: its pixel size read back from the PNG's header, its loudness curve
read back from the figure and held to the meter and to ffmpeg's ebur128, its markers read back
from the figure and found in the rendered pixels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from soundtrack.audio import write_wav
from soundtrack.loudness import short_term_lufs
from soundtrack.pictures import (
    BAR_LINES_GID,
    HEIGHT_PX,
    LOOP_END_GID,
    LOOP_START_GID,
    LOUDNESS_GID,
    TARGET_GID,
    WIDTH_PX,
    draw_picture,
    figure,
    write_picture,
)
from tests.reference import ebur128_short_term, png_size, sha256_of
from tests.signals import music_like

RATE = 44100


def _loud_then_quiet(seconds: float) -> np.ndarray:
    music = music_like(seconds, RATE, seed=11)
    music[:, round(seconds / 2 * RATE) :] *= 10 ** (-12 / 20)
    return music


def _artist(axes: object, gid: str) -> object:
    (found,) = [a for a in axes.get_children() if a.get_gid() == gid]  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize(
    ("seconds", "channels"), [(0.5, 2), (4.0, 1), (12.0, 2)], ids=["0.5 s", "mono", "12 s"]
)
def test_every_picture_has_the_same_pixel_size(
    tmp_path: Path, seconds: float, channels: int
) -> None:
    audio = music_like(seconds, RATE, channels=channels, seed=1)
    # A matplotlibrc that would crop and rescale a plain savefig changes nothing.
    with matplotlib.rc_context({"savefig.bbox": "tight", "savefig.dpi": 37}):
        picture = draw_picture(audio, RATE, tmp_path / "t.png", title="t", target_lufs=-16.0)
    assert png_size(tmp_path / "t.png") == (WIDTH_PX, HEIGHT_PX) == (1600, 900)  # formats.md
    assert (picture.width_px, picture.height_px) == (WIDTH_PX, HEIGHT_PX)
    assert picture.sha256 == sha256_of(tmp_path / "t.png")
    assert picture.bytes == (tmp_path / "t.png").stat().st_size


_DRAW = """
import sys
from pathlib import Path
from soundtrack.pictures import draw_picture
from tests.signals import music_like
draw_picture(music_like(2.0, 44100, seed=1), 44100, Path(sys.argv[1]), title="t", target_lufs=-16.0)
"""


def test_a_matplotlibrc_changes_nothing_in_the_picture(tmp_path: Path) -> None:
    """Read from $MATPLOTLIBRC or the working folder, as matplotlib reads it on import."""
    (tmp_path / "rc").mkdir()
    (tmp_path / "rc" / "matplotlibrc").write_text(
        "text.usetex: True\nsavefig.transparent: True\naxes.facecolor: black\n"
        "lines.linewidth: 9\nfont.size: 30\n"
    )
    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if k != "MATPLOTLIBRC"}
    env["PYTHONPATH"] = str(root)
    plain, styled = tmp_path / "plain.png", tmp_path / "styled.png"
    for out, cwd, extra in (
        (plain, tmp_path, {}),
        (styled, tmp_path / "rc", {"MATPLOTLIBRC": str(tmp_path / "rc")}),
    ):
        subprocess.run(
            [sys.executable, "-c", _DRAW, str(out)], cwd=cwd, env={**env, **extra}, check=True
        )
    assert sha256_of(styled) == sha256_of(plain)


def test_the_loudness_curve_is_the_meters_measurement(tmp_path: Path) -> None:
    music = _loud_then_quiet(10.0)
    fig = figure(music, RATE, title="boss (drums)", target_lufs=-18.0)
    assert fig.get_suptitle() == "boss (drums)"
    loudness = fig.axes[2]
    curve = _artist(loudness, LOUDNESS_GID)
    assert curve is loudness.lines[0]
    times_s, lufs = short_term_lufs(music, RATE)
    np.testing.assert_array_equal(curve.get_xdata(), times_s)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(curve.get_ydata(), lufs)  # type: ignore[attr-defined]
    # ...and what is drawn is the short-term loudness ffmpeg reads, 12 LU down after halfway.
    write_wav(tmp_path / "music.wav", music, RATE)
    reference = {round(t, 1): value for t, value in ebur128_short_term(tmp_path / "music.wav")}
    drawn = np.asarray(curve.get_ydata())  # type: ignore[attr-defined]
    assert drawn == pytest.approx([reference[round(t, 1)] for t in times_s], abs=0.1)
    assert drawn[0] - drawn[-1] == pytest.approx(12.0, abs=0.5)
    target = _artist(loudness, TARGET_GID)
    assert list(target.get_ydata()) == [-18.0, -18.0]  # type: ignore[attr-defined]


def test_loop_points_and_bar_lines_are_marked_on_every_panel(tmp_path: Path) -> None:
    music = music_like(8.0, RATE, seed=2)
    loop_start, loop_length = 22050, 6 * RATE
    bars = [0, 88200, 176400, 264600]  # every 2 s
    fig = figure(
        music,
        RATE,
        title="battle-loop",
        target_lufs=-16.0,
        loop_start=loop_start,
        loop_length=loop_length,
        bar_lines=bars,
    )
    for axes in fig.axes:
        starts = _artist(axes, LOOP_START_GID).get_xdata()  # type: ignore[attr-defined]
        ends = _artist(axes, LOOP_END_GID).get_xdata()  # type: ignore[attr-defined]
        assert list(starts) == [0.5, 0.5]
        assert list(ends) == [6.5, 6.5]
        segments = _artist(axes, BAR_LINES_GID).get_segments()  # type: ignore[attr-defined]
        assert [segment[0][0] for segment in segments] == [0.0, 2.0, 4.0, 6.0]
    # The loop start is drawn where its time falls on the time axis, in the written pixels.
    write_picture(fig, tmp_path / "loop.png")
    pixels = np.asarray(Image.open(tmp_path / "loop.png").convert("RGB")).astype(int)
    loudness = fig.axes[2]
    x_px, y_px = loudness.transData.transform((0.5, loudness.get_ylim()[1] - 0.5))
    column, row = round(x_px), HEIGHT_PX - round(y_px)
    green = np.array([44, 160, 44])  # tab:green
    around = pixels[row, column - 1 : column + 2]
    assert np.abs(around - green).sum(axis=1).min() < 30, around


def test_a_track_that_does_not_loop_has_no_loop_markers() -> None:
    fig = figure(music_like(4.0, RATE), RATE, title="sting", target_lufs=-16.0)
    gids = {a.get_gid() for axes in fig.axes for a in axes.get_children()}
    assert not gids & {LOOP_START_GID, LOOP_END_GID, BAR_LINES_GID}


def test_the_picture_is_not_blank(tmp_path: Path) -> None:
    draw_picture(music_like(6.0, RATE), RATE, tmp_path / "m.png", title="m", target_lufs=-16.0)
    pixels = np.asarray(Image.open(tmp_path / "m.png").convert("L")).astype(float)
    assert pixels.std() > 20
    # The spectrogram panel (the middle third) holds more than its background.
    middle = pixels[HEIGHT_PX // 3 : 2 * HEIGHT_PX // 3, WIDTH_PX // 10 : -WIDTH_PX // 10]
    assert len(np.unique(middle)) > 50
