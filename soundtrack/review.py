"""The review page: one self-contained HTML file per soundtrack, built from its lock, that plays
every published file, loops a loop track around its seam and plays stems in sync (docs/review.md).

The page references files by URLs relative to its own place beside the lock, so it works
served by `soundtrack review` and, for its <audio> players, opened from a folder (file://).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from soundtrack.gates import plain_number
from soundtrack.report import BuildReport, FileRecord, PictureRecord, TrackRecord

# Lossless first, its samples are the lock's; then the ogg (an mp3's encoder delay shifts loops).
_LOOP_SOURCES = ("wav", "flac", "ogg")
SEAM_LEAD_S = 2.0  # the "jump to the seam" button starts this long before the loop's end


@dataclass(frozen=True)
class ServedFile:
    """A file the lock names, which the page may reference and the server may send."""

    key: str
    sha256: str


def served_files(report: BuildReport) -> dict[str, ServedFile]:
    """Every key the lock references (audio, sidecars, pictures) -> what it must hash to."""
    return {
        stored.key: ServedFile(stored.key, stored.sha256)
        for track in report.tracks
        for stored in track.stored_files()
    }


def review_page(report: BuildReport, *, folder: str) -> str:
    """The page for `report`, placed at `folder` (the key prefix of the lock's folder, ending
    in '/'); every key the lock names must lie under it."""
    data = {
        "soundtrack": report.soundtrack,
        "seam_lead_s": SEAM_LEAD_S,
        "tracks": {t.id: _track_data(t, folder) for t in report.tracks},
    }
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    return _PAGE.format(
        title=_e(f"Review: {report.soundtrack}"),
        soundtrack=_e(report.soundtrack),
        summary=_e(
            f"built {report.created_at} by pipeline {report.pipeline_version}; "
            f"{len(report.tracks)} track(s): {counts or 'none'}"
        ),
        warnings="".join(f"<li>{_e(w)}</li>" for w in report.warnings),
        tracks="\n".join(_track_html(t, folder) for t in report.tracks),
        # A JSON data block is never run; '<' escaped so no value can close the element.
        data=json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e"),
        style=_STYLE,
        script=_SCRIPT,
    )


def content_security_policy() -> str:
    """The policy the server sends with the page: only its own inline style and script, and
    media, images and fetches from the server itself."""
    return (
        "default-src 'none'; "
        f"script-src '{_csp_hash(_SCRIPT)}'; style-src '{_csp_hash(_STYLE)}'; "
        "media-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _url(key: str, folder: str) -> str:
    """`key` relative to the page at `folder`, percent-encoded."""
    if not key.startswith(folder):
        raise ValueError(f"file key {key!r} is not under the page's folder {folder!r}")
    return quote(key.removeprefix(folder))


def _mix(track: TrackRecord) -> list[FileRecord]:
    return [f for f in track.files if f.stem is None]


def _stems(track: TrackRecord) -> dict[str, list[FileRecord]]:
    stems: dict[str, list[FileRecord]] = {}
    for record in track.files:
        if record.stem is not None:
            stems.setdefault(record.stem, []).append(record)
    return stems


def _decodable(records: list[FileRecord]) -> FileRecord | None:
    """The file Web Audio should decode: lossless when there is one, else the ogg."""
    by_format = {r.format: r for r in records}
    return next((by_format[f] for f in _LOOP_SOURCES if f in by_format), None)


def _loop_source(track: TrackRecord) -> FileRecord | None:
    """The mix file the loop player decodes, when the track loops."""
    source = _decodable(_mix(track))
    if source is None or source.loop_start is None or not source.loop_length:
        return None
    return source


def _track_data(track: TrackRecord, folder: str) -> dict[str, Any]:
    """What the script needs for the track's loop and stem players."""
    loop: dict[str, Any] | None = None
    source = _loop_source(track)
    if source is not None:
        loop = {
            "url": _url(source.key, folder),
            "format": source.format,
            "sample_rate": source.sample_rate,
            "loop_start": source.loop_start,
            "loop_length": source.loop_length,
        }
    stems = []
    for name, records in _stems(track).items():
        stem_source = _decodable(records)
        if stem_source is not None:
            stems.append(
                {
                    "name": name,
                    "url": _url(stem_source.key, folder),
                    "sample_rate": stem_source.sample_rate,
                    "loop_start": stem_source.loop_start,
                    "loop_length": stem_source.loop_length,
                }
            )
    return {"loop": loop, "stems": stems}


def _track_html(track: TrackRecord, folder: str) -> str:
    tid = _e(track.id)
    parts = [
        f'<section class="track" id="track-{tid}" data-track="{tid}">',
        f'<h2>{tid} <span class="status status-{_e(track.status)}">{_e(track.status)}</span></h2>',
    ]
    if track.reason:
        parts.append(f'<p class="reason">{_e(track.reason)}</p>')
    about = [("prompt", track.prompt), ("source", track.source), ("seed", track.seed)]
    about += [("takes", track.takes_summary()), ("stems", track.stems_summary())]
    about += [("variation of", track.variation_of), ("review", track.review_summary())]
    if track.failed_rebuild is not None:  # what is served is an earlier spec's
        failed = track.failed_rebuild
        about += [("last build", f"{failed.status}: {failed.reason or 'no reason given'}")]
    parts.append(_definitions(about))
    if track.picture is not None:
        parts.append(
            _figure(track.picture, f"waveform, spectrogram and loudness of {track.id}", folder)
        )
    mix = _mix(track)
    if mix:
        parts.append('<div class="players">')
        parts += [_audio(record, folder) for record in mix]
        parts.append("</div>")
    if _loop_source(track) is not None:
        parts.append(_LOOP_PLAYER.format(tid=tid, lead=f"{SEAM_LEAD_S:g}"))
    stems = _stems(track)
    if stems:
        parts.append(_stems_html(track, stems, folder))
    if track.gates:
        rows = "".join(
            f'<tr class="{"pass" if g.passed else "fail"}"><td>{_e(g.name)}</td>'
            f"<td>{_e(_number(g.value))}</td><td>{_e(g.limit)}</td>"
            f"<td>{'passed' if g.passed else 'failed'}</td><td>{_e(g.severity)}</td></tr>"
            for g in track.gates
        )
        parts.append(
            '<table class="gates"><caption>gates</caption><tr><th>gate</th><th>value</th>'
            f"<th>limit</th><th>verdict</th><th>severity</th></tr>{rows}</table>"
        )
    if track.analysis:
        rows = "".join(
            f"<tr><td>{_e(name)}</td><td>{_e(_number(value))}</td></tr>"
            for name, value in track.analysis.items()
        )
        parts.append(f'<table class="analysis"><caption>analysis</caption>{rows}</table>')
    models = [("model", track.model), ("stem model", track.stem_model)]
    parts.append(
        _definitions(
            [(k, f"{m.id} (revision {m.revision}), licence {m.license}") for k, m in models if m]
        )
    )
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _stems_html(track: TrackRecord, stems: dict[str, list[FileRecord]], folder: str) -> str:
    tid = _e(track.id)
    pictures = {stem.name: stem.picture for stem in track.stems}
    rows = []
    for name, records in stems.items():
        players = "".join(_audio(record, folder) for record in records)
        picture = pictures.get(name)
        if picture is not None:
            players += _figure(picture, f"waveform, spectrogram and loudness of {name}", folder)
        rows.append(
            f'<li><label><input type="checkbox" class="stem-mute" data-stem="{_e(name)}"> '
            f"mute {_e(name)}</label>{players}</li>"
        )
    return (
        f'<div class="stems" data-stems-track="{tid}"><h3>stems</h3>'
        '<p><button type="button" class="stems-play">Play stems in sync</button> '
        '<button type="button" class="stems-stop">Stop</button> '
        '<span class="stems-note"></span></p>'
        f"<ul>{''.join(rows)}</ul></div>"
    )


def _audio(record: FileRecord, folder: str) -> str:
    what = record.format if record.stem is None else f"{record.stem} {record.format}"
    return (
        f'<figure class="player"><figcaption>{_e(what)} · {record.duration_s:.3f} s · '
        f"{record.sample_rate} Hz · {record.bytes} bytes</figcaption>"
        f'<audio controls preload="metadata" src="{_e(_url(record.key, folder))}"></audio>'
        "</figure>"
    )


def _figure(picture: PictureRecord, alt: str, folder: str) -> str:
    return (
        f'<figure class="picture"><img src="{_e(_url(picture.key, folder))}" alt="{_e(alt)}" '
        # Fetched as it scrolls into view: a soundtrack's pictures outweigh its audio.
        f'width="{picture.width_px}" height="{picture.height_px}" loading="lazy"></figure>'
    )


def _definitions(pairs: Sequence[tuple[str, object]]) -> str:
    shown = [(k, v) for k, v in pairs if v not in (None, "")]
    if not shown:
        return ""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in shown)
    return f"<dl>{items}</dl>"


def _number(value: object) -> str:
    if isinstance(value, float):
        return plain_number(value)
    return "" if value is None else str(value)


_LOOP_PLAYER = (
    '<div class="loop" data-loop-track="{tid}"><h3>loop</h3>'
    '<p><button type="button" class="loop-play">Play loop</button> '
    '<button type="button" class="loop-seam">Jump to {lead} s before the seam</button> '
    '<button type="button" class="loop-stop">Stop</button> '
    '<output class="loop-position"></output></p><p class="loop-note"></p></div>'
)

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem;
  color: #1d1d1f; background: #fafafa; }
h1 { margin-bottom: 0.2rem; }
.track { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 0.5rem 1rem;
  margin: 1rem 0; }
.status { font-size: 0.8em; padding: 0.1em 0.5em; border-radius: 4px; background: #eee; }
.status-approved, .status-cached { background: #d9f2dc; }
.status-rejected, .status-failed { background: #f9d6d5; }
.reason { color: #a11; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 1rem; }
dt { color: #666; }
dd { margin: 0; overflow-wrap: anywhere; }
/* A right-to-left override in a prompt or comment turns its own text round, never the page's. */
dd, td, .reason, h2 { unicode-bidi: isolate; }
.players { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; }
.player { margin: 0; }
.player figcaption { font-size: 0.85em; color: #555; }
.picture img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.5rem 1rem 0.5rem 0; display: inline-table;
  vertical-align: top; }
caption { text-align: left; font-weight: 600; }
td, th { border-bottom: 1px solid #eee; padding: 0.15rem 0.6rem; text-align: left; }
tr.fail td { color: #a11; }
.loop-note, .stems-note { color: #8a5a00; }
output { font-variant-numeric: tabular-nums; margin-left: 0.5rem; }
"""

_SCRIPT = r"""
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const state = (window.reviewState = {});
  const served = location.protocol !== "file:";
  const contexts = new Map();

  function quoted(path) {
    return /^[\w@%+=:,./-]+$/.test(path) ? path : "'" + path.replace(/'/g, "'\\''") + "'";
  }
  function needsServer() {
    // The page lies at <root>/<soundtrack>/review.html: the storage root is two levels up.
    const root = decodeURIComponent(location.pathname).replace(/\/[^/]*\/[^/]*$/, "") || "/";
    return "the sample-exact loop player needs the served page: soundtrack review " +
      quoted(root) + " --soundtrack " + data.soundtrack;
  }
  function context(rate) {
    // One context per sample rate: decoding at the file's own rate keeps loop points exact.
    if (!contexts.has(rate)) contexts.set(rate, new AudioContext({ sampleRate: rate }));
    return contexts.get(rate);
  }
  async function decode(ctx, url) {
    const reply = await fetch(url);
    if (!reply.ok) throw new Error(url + ": HTTP " + reply.status);
    return ctx.decodeAudioData(await reply.arrayBuffer());
  }

  function loopPlayer(box, id, spec) {
    const s = (state[id] = {
      ready: false, playing: false, position_s: 0, wraps: 0, last_before_wrap_s: null,
      loop_start_s: spec.loop_start / spec.sample_rate,
      loop_end_s: (spec.loop_start + spec.loop_length) / spec.sample_rate,
      format: spec.format, error: null,
    });
    const note = box.querySelector(".loop-note");
    const shown = box.querySelector(".loop-position");
    if (!served) {
      note.textContent = needsServer();
      box.querySelectorAll("button").forEach((b) => (b.disabled = true));
      s.error = "file";
      return;
    }
    let ctx = null, buffer = null, node = null, startedAt = 0, offset = 0, timer = null;

    function update() {
      // The position follows the audio clock and the loop rule of AudioBufferSourceNode.
      let position = offset + Math.max(0, ctx.currentTime - startedAt);
      let wraps = 0;
      if (position >= s.loop_end_s) {
        const length = s.loop_end_s - s.loop_start_s;
        wraps = 1 + Math.floor((position - s.loop_end_s) / length);
        position = s.loop_start_s + ((position - s.loop_end_s) % length);
      }
      if (wraps > s.wraps) {
        s.last_before_wrap_s = s.position_s;
        if (s.wraps === 0) s.first_after_wrap_s = position;
      }
      s.wraps = wraps;
      s.position_s = position;
      shown.textContent = position.toFixed(3) + " s, wrapped " + wraps + "×";
    }
    function stop() {
      if (node) node.stop();
      node = null;
      clearInterval(timer);
      s.playing = false;
    }
    async function play(from_s) {
      try {
        ctx = ctx || context(spec.sample_rate);
        if (!buffer) {
          buffer = await decode(ctx, spec.url);
          Object.assign(s, { ready: true, buffer_sample_rate: buffer.sampleRate,
            buffer_length: buffer.length });
        }
        await ctx.resume();
        stop();
        node = new AudioBufferSourceNode(ctx, {
          buffer, loop: true, loopStart: s.loop_start_s, loopEnd: s.loop_end_s });
        node.connect(ctx.destination);
        startedAt = ctx.currentTime + 0.05;  // scheduled ahead, so the clock math is exact
        offset = from_s;
        node.start(startedAt, from_s);
        Object.assign(s, { playing: true, wraps: 0, position_s: from_s, last_before_wrap_s: null,
          first_after_wrap_s: null,
          node_loop_start_s: node.loopStart, node_loop_end_s: node.loopEnd });
        timer = setInterval(update, 20);
      } catch (error) {
        s.error = String(error);
        note.textContent = "cannot play the loop: " + error;
      }
    }
    box.querySelector(".loop-play").onclick = () => play(0);
    box.querySelector(".loop-seam").onclick = () =>
      play(Math.max(0, s.loop_end_s - data.seam_lead_s));
    box.querySelector(".loop-stop").onclick = stop;
  }

  function stemPlayer(box, id, stems) {
    const s = (state[id] = state[id] || {});
    const t = (s.stems = { ready: false, playing: false, muted: {}, error: null });
    const note = box.querySelector(".stems-note");
    if (!served) {
      note.textContent = needsServer().replace("loop player", "stem player");
      box.querySelectorAll("button").forEach((b) => (b.disabled = true));
      t.error = "file";
      return;
    }
    let ctx = null, buffers = null, nodes = [];
    const gains = {};
    stems.forEach((stem) => (t.muted[stem.name] = false));
    box.querySelectorAll(".stem-mute").forEach((check) => {
      check.onchange = () => {
        t.muted[check.dataset.stem] = check.checked;
        const gain = gains[check.dataset.stem];
        if (gain) gain.gain.setValueAtTime(check.checked ? 0 : 1, ctx.currentTime);
      };
    });
    function stop() {
      nodes.forEach((n) => n.stop());
      nodes = [];
      t.playing = false;
    }
    async function play() {
      try {
        if (!ctx) {
          ctx = context(stems[0].sample_rate);
          for (const stem of stems) {
            gains[stem.name] = new GainNode(ctx, { gain: t.muted[stem.name] ? 0 : 1 });
            gains[stem.name].connect(ctx.destination);
          }
        }
        if (!buffers) {
          buffers = await Promise.all(stems.map((stem) => decode(ctx, stem.url)));
          t.ready = true;
        }
        await ctx.resume();
        stop();
        const when = ctx.currentTime + 0.1;  // every stem starts on the same sample
        nodes = stems.map((stem, i) => {
          const node = new AudioBufferSourceNode(ctx, { buffer: buffers[i] });
          if (stem.loop_length) {
            node.loop = true;
            node.loopStart = stem.loop_start / stem.sample_rate;
            node.loopEnd = (stem.loop_start + stem.loop_length) / stem.sample_rate;
          }
          node.connect(gains[stem.name]);
          node.start(when);
          return node;
        });
        Object.assign(t, { playing: true, started_at_s: when });
      } catch (error) {
        t.error = String(error);
        note.textContent = "cannot play the stems: " + error;
      }
    }
    box.querySelector(".stems-play").onclick = play;
    box.querySelector(".stems-stop").onclick = stop;
  }

  for (const [id, track] of Object.entries(data.tracks)) {
    const section = [...document.querySelectorAll("section.track")]
      .find((el) => el.dataset.track === id);
    if (!section) continue;
    const loop = section.querySelector(".loop");
    if (track.loop && loop) loopPlayer(loop, id, track.loop);
    const stems = section.querySelector(".stems");
    if (track.stems.length && stems) stemPlayer(stems, id, track.stems);
  }
})();
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body>
<header>
<h1>{soundtrack}</h1>
<p class="summary">{summary}</p>
<ul class="warnings">{warnings}</ul>
</header>
<main>
{tracks}
</main>
<script type="application/json" id="review-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
