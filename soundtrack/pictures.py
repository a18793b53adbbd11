"""A picture of a track or stem for people to look at: its waveform, a spectrogram and its
short-term loudness against the target, with loop points and bar lines (docs/formats.md#pictures).

Drawn with matplotlib's Agg canvas alone (no pyplot, no GUI backend, no global state). It and the
meter are imported when a picture is drawn: publishing reads this module's names without them.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PICTURE_EXT = "png"
PICTURE_CONTENT_TYPE = "image/png"
WIDTH_PX = 1600
HEIGHT_PX = 900
_DPI = 100
# The spectrogram is decimated to what the picture can show: a column per two pixels and
# log-spaced rows, so a long track costs no more to draw than a short one.
_SPECTRUM_COLUMNS = 800
_SPECTRUM_ROWS = 256
_FFT_SIZE = 2048
_LOWEST_HZ = 20.0
_FREQUENCY_TICKS_HZ = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
_SPECTRUM_RANGE_DB = 90.0
_LOUDNESS_RANGE_LU = 40.0  # the loudness panel reaches at most this far under the target
# Artist ids, so that a reader of the figure (a test) finds each curve and marker.
LOUDNESS_GID = "short_term_lufs"
TARGET_GID = "target_lufs"
LOOP_START_GID = "loop_start"
LOOP_END_GID = "loop_end"
BAR_LINES_GID = "bar_lines"


@dataclass(frozen=True)
class Picture:
    """A written PNG and its checksum and size."""

    path: Path
    sha256: str
    bytes: int
    width_px: int
    height_px: int


def draw_picture(
    audio: np.ndarray,
    sample_rate: int,
    path: Path,
    *,
    title: str,
    target_lufs: float,
    loop_start: int | None = None,
    loop_length: int | None = None,
    bar_lines: Sequence[int] = (),
) -> Picture:
    """Draw `figure` of (channels, frames) audio and write it to `path` as a PNG."""
    fig = figure(
        audio,
        sample_rate,
        title=title,
        target_lufs=target_lufs,
        loop_start=loop_start,
        loop_length=loop_length,
        bar_lines=bar_lines,
    )
    return write_picture(fig, path)


def figure(
    audio: np.ndarray,
    sample_rate: int,
    *,
    title: str,
    target_lufs: float,
    loop_start: int | None = None,
    loop_length: int | None = None,
    bar_lines: Sequence[int] = (),
) -> Figure:
    """WIDTH_PX x HEIGHT_PX: the waveform, the spectrogram and the short-term loudness with a
    line at `target_lufs`, on one time axis; loop points and bar lines (samples) on each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    from soundtrack.loudness import short_term_lufs

    _default_style()
    duration_s = audio.shape[1] / sample_rate
    fig = Figure(figsize=(WIDTH_PX / _DPI, HEIGHT_PX / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    wave, spectrum, loudness = fig.subplots(3, 1, sharex=True, height_ratios=(1.0, 1.4, 1.0))
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.06, hspace=0.12)
    fig.suptitle(title, x=0.06, horizontalalignment="left")

    # 1. Waveform: the lowest and highest sample of any channel under each pixel column.
    edges = np.linspace(0, audio.shape[1], min(WIDTH_PX, audio.shape[1]) + 1).astype(np.int64)
    starts = edges[:-1]
    lows = np.minimum.reduceat(audio.min(axis=0), starts)
    highs = np.maximum.reduceat(audio.max(axis=0), starts)
    wave.fill_between(starts / sample_rate, lows, highs, step="post", linewidth=0.0)
    wave.set_ylim(-1.0, 1.0)
    wave.set_ylabel("amplitude")

    # 2. Spectrogram of the mid signal, in dB under its loudest point, on a log frequency axis.
    times_s, frequencies_hz, level_db = _spectrogram(audio.mean(axis=0), sample_rate)
    spectrum.pcolormesh(
        times_s,
        frequencies_hz,
        level_db,
        shading="flat",
        cmap="magma",
        vmin=-_SPECTRUM_RANGE_DB,
        vmax=0.0,
        rasterized=True,
    )
    spectrum.set_yscale("log")
    # Plain labels at round frequencies: the log scale's own (10^n, as mathtext, with minor
    # ticks) take longer to lay out than the whole spectrogram takes to draw.
    ticks_hz = [hz for hz in _FREQUENCY_TICKS_HZ if frequencies_hz[0] <= hz <= frequencies_hz[-1]]
    spectrum.set_yticks(
        ticks_hz, labels=[f"{hz:g}" if hz < 1000 else f"{hz / 1000:g}k" for hz in ticks_hz]
    )
    spectrum.yaxis.set_minor_locator(NullLocator())
    spectrum.set_ylim(frequencies_hz[0], frequencies_hz[-1])
    spectrum.set_ylabel("Hz")

    # 3. Short-term loudness (EBU R128, 3 s windows) as the meter measures it, and the target.
    curve_times_s, curve_lufs = short_term_lufs(audio, sample_rate)
    loudness.plot(curve_times_s, curve_lufs, gid=LOUDNESS_GID, label="short-term (3 s)")
    loudness.axhline(
        target_lufs,
        gid=TARGET_GID,
        color="tab:red",
        linestyle="--",
        label=f"target {target_lufs:g} LUFS",
    )
    finite = curve_lufs[np.isfinite(curve_lufs)]
    top = max(target_lufs, float(finite.max()) if finite.size else target_lufs) + 3.0
    bottom = min(target_lufs, float(finite.min()) if finite.size else target_lufs) - 3.0
    loudness.set_ylim(max(bottom, target_lufs - _LOUDNESS_RANGE_LU), top)
    loudness.set_ylabel("LUFS")
    loudness.set_xlabel("s")
    loudness.set_xlim(0.0, duration_s)

    for axes in (wave, spectrum, loudness):
        _mark(axes, sample_rate, loop_start, loop_length, bar_lines)
    # Above the panels, right of the title: inside one it would hide what it explains.
    handles, labels = loudness.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=len(labels), frameon=False)
    return fig


@functools.cache
def _default_style() -> None:
    """matplotlib's own defaults, once per process, over any matplotlibrc it read when imported
    (in the working folder, $MATPLOTLIBRC, the user's): a picture must look the same on every
    machine, and `text.usetex` would fail every track where LaTeX is not installed."""
    import matplotlib.style

    matplotlib.style.use("default")


def write_picture(fig: Figure, path: Path) -> Picture:
    """Render `fig` as a PNG at its own size and write it to `path` (a staging folder)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # The figure's own size and dpi, whatever a matplotlibrc says (savefig.bbox, savefig.dpi):
    # the pixel size is fixed. (rc_context would say it too, but for every thread at once.)
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches=fig.bbox_inches)
    body = buffer.getvalue()
    path.write_bytes(body)
    width_px, height_px = canvas.get_width_height()
    return Picture(path, hashlib.sha256(body).hexdigest(), len(body), width_px, height_px)


def _spectrogram(mid: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time edges s, frequency edges Hz, dB per cell) of `mid`, decimated to the picture."""
    duration_s = mid.size / sample_rate
    mid = np.asarray(mid, dtype=np.float32)
    if mid.size < _FFT_SIZE:
        mid = np.pad(mid, (0, _FFT_SIZE - mid.size))
    columns = min(_SPECTRUM_COLUMNS, mid.size - _FFT_SIZE + 1)
    starts = np.linspace(0, mid.size - _FFT_SIZE, columns).astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(mid, _FFT_SIZE)[starts]
    power = np.abs(np.fft.rfft(windows * np.hanning(_FFT_SIZE).astype(np.float32))) ** 2
    # Log-spaced rows read off the FFT bins by linear interpolation between neighbours.
    nyquist_hz = sample_rate / 2.0
    edges_hz = np.geomspace(_LOWEST_HZ, nyquist_hz, _SPECTRUM_ROWS + 1)
    centres_bin = np.sqrt(edges_hz[:-1] * edges_hz[1:]) * _FFT_SIZE / sample_rate
    below = np.minimum(np.floor(centres_bin).astype(np.int64), power.shape[1] - 2)
    weight = centres_bin - below
    rows = power[:, below] * (1.0 - weight) + power[:, below + 1] * weight
    level_db = 10.0 * np.log10(rows.T + 1e-20)
    level_db -= level_db.max()
    times_s = np.linspace(0.0, duration_s, columns + 1)
    return times_s, edges_hz, level_db


def _mark(
    axes: Axes,
    sample_rate: int,
    loop_start: int | None,
    loop_length: int | None,
    bar_lines: Sequence[int],
) -> None:
    """The bar lines, and the loop's start and end, as vertical lines across `axes`."""
    if bar_lines:
        axes.vlines(
            np.asarray(bar_lines) / sample_rate,
            0.0,
            1.0,
            transform=axes.get_xaxis_transform(),
            gid=BAR_LINES_GID,
            colors="0.5",
            linewidth=0.6,
            alpha=0.6,
            label="bar lines",
        )
    if loop_start is not None and loop_length:
        end = loop_start + loop_length
        axes.axvline(
            loop_start / sample_rate, gid=LOOP_START_GID, color="tab:green", label="loop start"
        )
        axes.axvline(
            end / sample_rate, gid=LOOP_END_GID, color="tab:green", linestyle=":", label="loop end"
        )
