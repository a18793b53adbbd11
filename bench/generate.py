"""Generation on random weights with real checkpoints' sizes (nothing is downloaded).

--family musicgen: batched vs one generate call per track, facebook/musicgen-small's sizes (T5-base
text encoder, 24-layer 1024-wide decoder, 32 kHz EnCodec; about 587 M parameters). Per track: one
generate() call per track with the model already loaded (a script per track would also load the
model each time, so this is the conservative baseline). Batched: all tracks in one call.
--family ace-step: ACE-Step 1.5 turbo (the non-XL sizes: 1.58 B DiT, 0.61 B condition encoder,
Qwen3-Embedding-0.6B text encoder, 48 kHz Oobleck VAE; 8 steps) against MusicGen-small: seconds
of compute per second of audio for a 10 s track and a 60 s one (MusicGen in 30 s windows there).
Each model lives in a worker process of its own, so each peak RSS is its own.
Pairs: the two sides run one after the other, --pairs times (10 s; the 60 s figures once), and the
ratio is the median of each pair's ratio, which cancels most of the drift of a shared machine.
Run: python bench/generate.py --family musicgen|ace-step [--device cpu] [--pairs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import transformers
from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step import AceStepConditionEncoder
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    Qwen3Config,
    Qwen3Model,
    T5Config,
)

from soundtrack.errors import GenerationError, SoundtrackError
from soundtrack.models import GenerationRequest, Generator
from soundtrack.models.acestep import AceStepGenerator
from soundtrack.models.device import model_dtype, pipeline_parameters, resolve_device
from soundtrack.models.musicgen import MusicgenGenerator
from soundtrack.models.tiny import offline_tokenizer, randomise_codebooks
from soundtrack.models.tiny_acestep import offline_tokenizer as acestep_tokenizer
from soundtrack.spec import AceStepSampling, Sampling

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


def build_musicgen(device: str) -> tuple[MusicgenGenerator, int]:
    """MusicGen-small's sizes, random weights, loaded as load_musicgen loads a checkpoint."""
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


def build_acestep(device: str) -> tuple[AceStepGenerator, int]:
    """ACE-Step 1.5 turbo's sizes (diffusers' defaults are the non-XL checkpoint's), random
    weights; only the tokenizer is ours (its vocabulary changes no cost per token)."""
    torch.manual_seed(0)
    text_encoder = Qwen3Model(  # Qwen3-Embedding-0.6B
        Qwen3Config(
            vocab_size=151669,
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        )
    )
    vae = AutoencoderOobleck(  # type: ignore[no-untyped-call]
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 6, 10],  # 48 kHz / 1920: 25 latent frames a second
        channel_multiples=[1, 2, 4, 8, 16],
        decoder_channels=128,
        decoder_input_channels=64,
        audio_channels=2,
        sampling_rate=48000,
    )
    pipeline: Any = AceStepPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=acestep_tokenizer(),
        transformer=AceStepTransformer1DModel(is_turbo=True, model_version="turbo"),
        condition_encoder=AceStepConditionEncoder(),  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),  # type: ignore[no-untyped-call]
    )
    pipeline.to(model_dtype(device)).to(device)
    generator = AceStepGenerator(
        pipeline,
        model_id="random weights, ACE-Step 1.5 turbo sizes",
        revision="none",
        license="n/a",
        device=device,
    )
    return generator, pipeline_parameters(pipeline)


BUILDERS = {"musicgen": build_musicgen, "ace-step": build_acestep}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Phase:
    seconds: float = 0.0
    peak_rss: int = 0
    peak_gpu: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # seconds per pipeline component
    rejected: list[str] = field(default_factory=list)  # the generator's reasons, if any


@contextmanager
def measured(device: str) -> Iterator[Phase]:
    """Wall time and peak memory of the block; a thread samples the resident set every 20 ms."""
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


def requests_for(tracks: int, seconds: float, steps: int | None = None) -> list[GenerationRequest]:
    ace_step = AceStepSampling(steps=steps) if steps is not None else None
    return [
        GenerationRequest(
            f"track-{i}",
            PROMPTS[i % len(PROMPTS)],
            seconds,
            1000 + i,
            Sampling(),
            ace_step=ace_step,
        )
        for i in range(tracks)
    ]


REJECTED: list[str] = []  # renders the generator refused (NaN, silence): timed, then reported


def render(
    generator: Generator, requests: list[GenerationRequest], batch_size: int
) -> list[np.ndarray]:
    audio = []
    for result in generator.generate(requests, batch_size=batch_size):
        if isinstance(result, GenerationError):
            # Random weights in half precision may overflow where real ones do not; the time
            # is still the model's, so the run goes on and the table says so.
            REJECTED.append(str(result))
            continue
        audio.append(result.audio)
    return audio


def worker(family: str, device: str, conn: Connection) -> None:
    """Hold one model; render what the parent asks for, answer with the time and memory."""
    started = time.perf_counter()
    generator, parameters = BUILDERS[family](device)
    parts: dict[str, float] = {}
    if isinstance(generator, AceStepGenerator):
        time_components(generator._pipeline, parts)
    # Warm-up: every component once (ACE-Step with one step of its shortest render).
    render(generator, requests_for(1, 1.0, steps=1), 1)
    conn.send({"parameters": parameters, "build_s": time.perf_counter() - started})
    while (job := conn.recv()) is not None:
        tracks, seconds = job
        parts.clear()
        with measured(device) as phase:
            render(generator, requests_for(tracks, seconds), tracks)
        phase.parts = dict(parts)
        phase.rejected = list(REJECTED)
        REJECTED.clear()
        conn.send(asdict(phase))


def time_components(pipeline: Any, parts: dict[str, float]) -> None:
    """Add each component's forward time to `parts` (where a render's time goes)."""
    modules = {
        "DiT (every step)": pipeline.transformer,
        "VAE decoder": pipeline.vae.decoder,
        "condition encoder": pipeline.condition_encoder,
        "text encoder": pipeline.text_encoder,
    }
    # On a GPU a forward call returns once its kernels are queued: wait for them at each edge.
    sync = torch.cuda.synchronize if pipeline.device.type == "cuda" else lambda: None

    def clock() -> float:
        sync()
        return time.perf_counter()

    for name, module in modules.items():
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_, s=started: s.append(clock()))
        module.register_forward_hook(
            lambda *_, s=started, n=name: parts.update({n: parts.get(n, 0.0) + clock() - s.pop()})
        )


class Worker:
    """A model in a process of its own (spawned: no torch threads inherited)."""

    def __init__(self, family: str, device: str) -> None:
        self.family = family
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=worker, args=(family, device, child), daemon=True)
        self._process.start()
        self.info: dict[str, Any] = self._conn.recv()

    def run(self, tracks: int, seconds: float) -> Phase:
        self._conn.send((tracks, seconds))
        phase = Phase(**self._conn.recv())
        print(f"{self.family}: {tracks} x {seconds:g} s in {phase.seconds:.1f} s", file=sys.stderr)
        return phase

    def close(self) -> None:
        self._conn.send(None)
        self._process.join()


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


def versions() -> str:
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"diffusers {diffusers.__version__}"
    )


def loads() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)})"


def gib(phase: Phase, device: str) -> str:
    text = f"{phase.peak_rss / 2**30:.2f} GiB"
    if device.startswith("cuda"):
        text += f" (GPU {phase.peak_gpu / 2**30:.2f} GiB)"
    return text


def batching(device: str, tracks: int, seconds: float, pairs: int) -> str:
    """MusicGen: one call per track vs one batched call, paired runs in one process."""
    load_before = loads()
    generator, parameters = build_musicgen(device)
    render(generator, requests_for(1, 0.1), 1)
    requests = requests_for(tracks, seconds)
    runs: list[tuple[Phase, Phase]] = []
    diff = 0.0
    for _ in range(pairs):
        with measured(device) as per_track:
            separate = [render(generator, [request], 1)[0] for request in requests]
        with measured(device) as batched:
            together = render(generator, requests, tracks)
        runs.append((per_track, batched))
        if not REJECTED:
            diff = max(
                diff,
                *(float(np.max(np.abs(a - b))) for a, b in zip(separate, together, strict=True)),
            )
    ratios = [p.seconds / b.seconds for p, b in runs]
    audio_s = tracks * seconds
    lines = [
        "## Generation: batched vs per-track (MusicGen)\n",
        f"Command: `python bench/generate.py --family musicgen --device {device} --tracks "
        f"{tracks} --seconds {seconds:g} --pairs {pairs}`  ",
        f"Machine: {machine(device)}; {versions()} ({torch.get_num_threads()} threads)  ",
        f"Model: random weights with facebook/musicgen-small's sizes ({parameters / 1e6:.0f} M "
        f"parameters, {model_dtype(device)}); CFG 3, top-k 250  ",
        f"Load average (1/5/15 min) before: {load_before}, after: {loads()}\n",
        f"| {tracks} tracks x {seconds:g} s on {device} | wall time per pair | audio s per "
        "wall s (median) | peak RSS |",
        "|---|---|---|---|",
        f"| one generate call per track | {', '.join(f'{p.seconds:.1f}' for p, _ in runs)} s "
        f"| {audio_s / statistics.median(p.seconds for p, _ in runs):.3f} "
        f"| {gib(max((p for p, _ in runs), key=lambda x: x.peak_rss), device)} |",
        f"| batched: one call for {tracks} tracks | "
        f"{', '.join(f'{b.seconds:.1f}' for _, b in runs)} s "
        f"| {audio_s / statistics.median(b.seconds for _, b in runs):.3f} "
        f"| {gib(max((b for _, b in runs), key=lambda x: x.peak_rss), device)} |",
        f"\nBatched is **{spread(ratios)}** faster than one call per track (median of the "
        "paired ratios).  ",
        f"Same seeds, batched vs alone: largest sample difference {diff:.2e}.",
        *(f"\nRejected by the generator's output checks: {reason}" for reason in REJECTED),
    ]
    return "\n".join(lines)


def families(device: str, pairs: int, short_s: float, long_s: float) -> str:
    """ACE-Step vs MusicGen-small: compute seconds per audio second, short and long tracks."""
    load_before = loads()
    workers = {name: Worker(name, device) for name in ("ace-step", "musicgen")}
    try:
        short = [
            (workers["musicgen"].run(1, short_s), workers["ace-step"].run(1, short_s))
            for _ in range(pairs)
        ]
        long = (workers["musicgen"].run(1, long_s), workers["ace-step"].run(1, long_s))
    finally:
        for w in workers.values():
            w.close()
    short_ratios = [m.seconds / a.seconds for m, a in short]
    info = {name: w.info for name, w in workers.items()}
    rows = [
        ("MusicGen-small", f"{short_s:g} s", [m for m, _ in short]),
        ("ACE-Step 1.5 turbo, 8 steps", f"{short_s:g} s", [a for _, a in short]),
        ("MusicGen-small (30 s windows)", f"{long_s:g} s", [long[0]]),
        ("ACE-Step 1.5 turbo, 8 steps", f"{long_s:g} s", [long[1]]),
    ]
    lines = [
        "## Generation: ACE-Step 1.5 vs MusicGen-small, compute per second of audio\n",
        f"Command: `python bench/generate.py --family ace-step --device {device} --pairs "
        f"{pairs}`  ",
        f"Machine: {machine(device)}; {versions()}  ",
        f"Models: random weights with the real sizes, {model_dtype(device)}: ACE-Step 1.5 turbo "
        f"{info['ace-step']['parameters'] / 1e9:.2f} B parameters (built in "
        f"{info['ace-step']['build_s']:.0f} s), MusicGen-small "
        f"{info['musicgen']['parameters'] / 1e6:.0f} M (CFG 3, top-k 250); one track per call, "
        "each model in its own process  ",
        f"Load average (1/5/15 min) before: {load_before}, after: {loads()}\n",
        "| model | track | wall time (s) | compute s per audio s | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for name, length, phases in rows:
        seconds = statistics.median(p.seconds for p in phases)
        audio_s = float(length.removesuffix(" s"))
        lines.append(
            f"| {name} | {length} | {', '.join(f'{p.seconds:.1f}' for p in phases)} "
            f"| {seconds / audio_s:.2f} | {gib(max(phases, key=lambda x: x.peak_rss), device)} |"
        )
    median_run = sorted((a for _, a in short), key=lambda p: p.seconds)[len(short) // 2]
    lines += [
        f"\nWhere ACE-Step's median {short_s:g} s render went ({median_run.seconds:.1f} s):\n",
        "| component | seconds | share |",
        "|---|---|---|",
        *(
            f"| {name} | {seconds:.1f} | {seconds / median_run.seconds:.0%} |"
            for name, seconds in median_run.parts.items()
        ),
    ]
    lines += [
        *(
            f"\nRejected by the generator's output checks (timed all the same): {reason}"
            for phase in [*(p for pair in short for p in pair), *long]
            for reason in phase.rejected
        ),
        f"\nACE-Step is **{spread(short_ratios)}** faster per second of audio at {short_s:g} s "
        f"(median of {pairs} paired ratios), and **{long[0].seconds / long[1].seconds:.2f}x** at "
        f"{long_s:g} s (one pair). Peak RSS is each worker process's resident set during its "
        "render, the model included.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("musicgen", "ace-step"), default="musicgen")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--pairs", type=int, default=3, help="paired runs (at least 3)")
    parser.add_argument("--tracks", type=int, default=4, help="musicgen: tracks per batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="musicgen: seconds a track")
    args = parser.parse_args(argv)
    if args.pairs < 3:
        parser.error(f"--pairs must be at least 3 (a median of paired ratios), got {args.pairs}")
    if args.tracks < 1:
        parser.error(f"--tracks must be at least 1, got {args.tracks}")
    if not args.seconds > 0:  # NaN too
        parser.error(f"--seconds must be above 0, got {args.seconds}")
    try:
        device = resolve_device(args.device)
    except SoundtrackError as exc:  # before minutes of building real-size models
        parser.error(str(exc))
    if args.family == "musicgen":
        print(batching(device, args.tracks, args.seconds, args.pairs))
    else:
        print(families(device, args.pairs, short_s=10.0, long_s=60.0))


if __name__ == "__main__":
    main()
