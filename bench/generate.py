"""Generation: batched vs one generate call per track, same model, same requests, same run.

The model has facebook/musicgen-small's sizes (T5-base text encoder, 24-layer 1024-wide decoder,
32 kHz EnCodec; about 587 M parameters) with random weights, so nothing is downloaded; the work
per token is the real model's. Per track: one generate() call per track with the model already
loaded (a script per track would also load the model each time, so this is the conservative
baseline). Batched: all tracks in one generate() call. A sampler thread reads the resident set
every 20 ms for each phase's peak; on CUDA the peak allocated memory is reported too.
Run: python bench/generate.py [--device cpu] [--tracks 4] [--seconds 2]   (prints markdown)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
)

from soundtrack.errors import GenerationError
from soundtrack.models import GenerationRequest
from soundtrack.models.device import model_dtype, resolve_device
from soundtrack.models.musicgen import MusicgenGenerator
from soundtrack.models.tiny import offline_tokenizer, randomise_codebooks
from soundtrack.spec import Sampling

PROMPTS = (
    "synthwave in D minor at 90 BPM with warm analog pads",
    "orchestral battle theme, brass, strings, taiko drums",
    "calm piano loop for a menu screen, C major",
    "lofi hip hop beat with vinyl crackle and jazzy chords",
    "ambient drone for a cave level, dark, slow evolving textures",
    "chiptune boss fight, fast arpeggios, square waves",
    "acoustic guitar folk tune, village theme, flute melody",
    "tense stealth music, pulsing synth, low strings",
)


def musicgen_small_config() -> MusicgenConfig:
    """facebook/musicgen-small's architecture (t5-base, encodec_32khz, a 24-layer decoder)."""
    text_encoder = T5Config(
        vocab_size=32128, d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64
    )
    audio_encoder = EncodecConfig(
        sampling_rate=32000,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        num_filters=64,
        codebook_size=2048,
        use_causal_conv=False,
        normalize=False,
        use_conv_shortcut=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        num_codebooks=4,
        pad_token_id=2048,
        bos_token_id=2048,
    )
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


def build_generator(device: str) -> tuple[MusicgenGenerator, int]:
    torch.manual_seed(0)
    model: Any = MusicgenForConditionalGeneration(musicgen_small_config())
    randomise_codebooks(model)
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    model.generation_config.bos_token_id = 2048
    model.to(model_dtype(device))
    model.audio_encoder.to(torch.float32)  # as load_musicgen does
    model.to(device)
    tokenizer = offline_tokenizer()
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=32000)
    processor = MusicgenProcessor(feature_extractor=extractor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    generator = MusicgenGenerator(
        model,
        processor,
        model_id="random weights, facebook/musicgen-small sizes",
        revision="none",
        license="n/a",
        device=device,
    )
    return generator, model.num_parameters()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Phase:
    seconds: float = 0.0
    peak_rss: int = 0
    peak_gpu: int = 0


@contextmanager
def measured(device: str) -> Iterator[Phase]:
    phase = Phase(peak_rss=rss_bytes())
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            phase.peak_rss = max(phase.peak_rss, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sampler.start()
    started = time.perf_counter()
    try:
        yield phase
    finally:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            phase.peak_gpu = torch.cuda.max_memory_allocated()
        phase.seconds = time.perf_counter() - started
        done.set()
        sampler.join()


def render(
    generator: MusicgenGenerator, requests: list[GenerationRequest], batch_size: int
) -> list[np.ndarray]:
    audio = []
    for result in generator.generate(requests, batch_size=batch_size):
        if isinstance(result, GenerationError):
            raise result
        audio.append(result.audio)
    return audio


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    text = f"{cpu_name()}, {cores} cores usable, {ram_gib:.0f} GiB RAM"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    load_before = os.getloadavg()

    started = time.perf_counter()
    generator, parameters = build_generator(device)
    build_s = time.perf_counter() - started
    requests = [
        GenerationRequest(
            f"track-{i}", PROMPTS[i % len(PROMPTS)], args.seconds, 1000 + i, Sampling()
        )
        for i in range(args.tracks)
    ]
    render(generator, [GenerationRequest("warm-up", "warm up", 0.1, 0, Sampling())], 1)

    with measured(device) as per_track:
        separate = [render(generator, [request], 1)[0] for request in requests]
    with measured(device) as batched:
        together = render(generator, requests, args.tracks)
    load_after = os.getloadavg()

    audio_s = args.tracks * args.seconds
    speedup = per_track.seconds / batched.seconds
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(separate, together, strict=True))
    gib = 2**30
    rows = [
        ("one generate call per track", per_track),
        (f"batched: one call for {args.tracks} tracks", batched),
    ]
    lines = [
        "## Generation: batched vs per-track\n",
        f"Command: `python bench/generate.py --device {args.device} --tracks {args.tracks} "
        f"--seconds {args.seconds:g}`  ",
        f"Machine: {machine(device)}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}  ",
        f"Model: random weights with facebook/musicgen-small's sizes ({parameters / 1e6:.0f} M "
        f"parameters, {model_dtype(device)}), built in {build_s:.0f} s; CFG 3, top-k 250  ",
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.1f}' for x in load_after)}\n",
    ]
    on_gpu = device.startswith("cuda")
    lines.append(
        f"| {args.tracks} tracks x {args.seconds:g} s on {device} | wall time "
        f"| audio s per wall s | peak RSS |" + (" peak GPU memory |" if on_gpu else "")
    )
    lines.append("|---|---|---|---|" + ("---|" if on_gpu else ""))
    for name, phase in rows:
        lines.append(
            f"| {name} | {phase.seconds:.1f} s | {audio_s / phase.seconds:.3f} "
            f"| {phase.peak_rss / gib:.2f} GiB |"
            + (f" {phase.peak_gpu / gib:.2f} GiB |" if on_gpu else "")
        )
    lines += [
        f"\nBatched is **{speedup:.2f}x** faster than one call per track.  ",
        f"Same seeds, batched vs alone: largest sample difference {diff:.2e} (each track samples "
        "from its own seeded stream, so only float rounding differs).  ",
        "Process peak RSS (ru_maxrss, includes building the model): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
