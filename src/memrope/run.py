"""One ``memrope generate`` run: settings -> model, policy, prompts -> chunk loop -> output.

Everything a run needs is a plain, JSON-serialisable ``settings`` dict, so a resumable run stores
it in its manifest and ``--resume DIR`` rebuilds the very same run; where the run writes (video,
statistics, run directory) is an :class:`~memrope.generate_options.Outputs` from the command line.
Two output sinks: a direct video file, or a run directory (segments + logs + checkpoints, see
:mod:`memrope.session`).

Order of work: every check that can fail (destinations writable, the model and prompts valid,
devices present, a resumed state matching its run, free space for one checkpoint) runs before the
first file is created or changed. Memory and per-checkpoint work do not grow with the run: chunk
statistics go to an append-only log (:mod:`memrope.chunk_log`) and the summary is bounded.

Stopping: SIGINT / SIGTERM set a flag; the current chunk is finished, the output flushed, a
checkpoint written (run directory) and the process exits 130, resumable. Non-finite latents stop
the run before the bad chunk is written, keeping the last good state (exit 3). A full disk is
reported with the state left at the last checkpoint (exit 4).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .chunk_log import RunSummary, StatsFile, read_records
from .errors import EXIT_INTERRUPTED, DiskFull, RunFailure, UserError
from .errors.paths import check_free_space, check_output_dir, check_output_file
from .generate_options import Outputs, settings_hash, video_suffix
from .host_memory import peak_rss_mb
from .session import (
    CHUNKS_LOG,
    LEGACY_VERSION,
    MANIFEST,
    Manifest,
    RunDirectory,
    Segment,
    SessionError,
    legacy_manifest,
    write_migrated,
)
from .stream import LiveStream, PromptSpan

WARMUP_CHUNKS = 2  # chunks left out of the steady-state latency summary
# What a manifest written before these settings existed was made with (its run resumes the same way).
LEGACY_SETTINGS = {"noise": "chunk"}
LEGACY_MODEL_SETTINGS = {"pixels": "round", "lora_mode": "merged"}
DEFAULT_SECONDS = 10.0  # video length when neither a length nor a timed schedule is given
CHECKPOINT_SLACK_BYTES = 1 << 20  # manifest, log lines and file-system overhead of one checkpoint
RESUMED_OUT = "video"  # stem of the assembled video inside a run directory not named OUT.run


def latent_frames_for(duration_s: float, fps: int, temporal_stride: int, chunk: int) -> int:
    """Smallest whole-chunk latent length whose video (1 + stride (T-1) frames) lasts >= duration."""
    frames = max(1, math.ceil(duration_s * fps))
    latent = math.ceil((frames - 1) / temporal_stride) + 1
    return math.ceil(latent / chunk) * chunk


class StopFlag:
    """SIGINT/SIGTERM -> finish the chunk, then stop cleanly. A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\nmemrope: {signal.Signals(signum).name}: finishing the current chunk, then saving",
              file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Prepared:
    bundle: Any
    generator: Any
    n_chunks: int
    n_latent: int
    switches: dict
    schedule: Any
    starts: list[int]
    texts: list[Any]  # text context of each schedule segment
    toy: bool = False  # the embedded model: prompts are checked against its words

    def spans(self) -> list[PromptSpan]:
        return [PromptSpan(start, seg.prompt, seg.cut) for start, seg in zip(self.starts, self.schedule.segments)]

    def stream(self, overlap_decode: bool, context: dict | None = None) -> LiveStream:
        """The run's chunks as a :class:`~memrope.stream.LiveStream` of its fixed length and schedule."""
        texts = {start: text for start, text in zip(self.starts, self.texts)}
        stream = LiveStream(self.generator, self.encode_prompt, self.spans(), texts=texts, context=context,
                            until=self.n_chunks, overlap_decode=overlap_decode)
        stream.align_text()
        return stream

    def encode_prompt(self, prompt: str) -> Any:
        """A prompt's text context (the schedule's prompts are encoded already)."""
        return encode_prompt(self.bundle, prompt, toy=self.toy)


def encode_prompt(bundle: Any, prompt: str, toy: bool) -> Any:
    """A prompt's text context for ``bundle``; ``toy``: checked against the embedded model's words first
    (``ValueError``). A prompt longer than the encoder takes is cut, with a warning."""
    from .vocabulary import check_toy_prompt

    if toy:
        check_toy_prompt(prompt)
    text = bundle.model.encode_text(bundle.text_encoder.encode([prompt]))
    for cut in bundle.text_encoder.truncated:
        print(f"memrope: warning: prompt cut to the encoder's {bundle.text_encoder.text_len} tokens: "
              f"{cut[:60]!r}...", file=sys.stderr)
    return text


def _check_prompt_cache(bundle: Any, prompts: list[str], resuming: bool) -> None:
    """A real model's prompt embeddings come from a cache folder; encoding a missing one writes there."""
    cache_dir = getattr(bundle.text_encoder, "cache_dir", None)
    factory = getattr(bundle.text_encoder, "factory", None)
    if cache_dir is None or factory is None:
        return
    from .models.prompt_cache import PromptEmbeddingCache

    cache = PromptEmbeddingCache(cache_dir, factory.identity)
    missing = [p for p in prompts if p not in cache]
    if not missing:
        return
    if resuming:
        raise UserError(f"the prompt cache {cache_dir} no longer holds this run's prompt embeddings "
                        f"({len(missing)} missing); fill it with `memrope encode-prompts`, or give --prompt-cache")
    check_output_dir(cache_dir, "the prompt cache (--prompt-cache, default: inside --wan-dir)")


def check_device(name: str | None, option: str) -> None:
    """A device the machine has (``auto`` and ``None`` always do)."""
    if name in (None, "auto"):
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option} {name!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{option} {name} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {name}: memrope runs on cpu or cuda devices")


def prepare(settings: dict[str, Any], resuming: bool = False) -> Prepared:
    """Validate everything and build the run; raises UserError before any output exists."""
    from .cache import make_policy
    from .cache.preflight import preflight
    from .generate import GenerationConfig, StreamingGenerator
    from .models.bundle import BundleOptions
    from .models.loading import load_bundle
    from .schedule import schedule_from_data
    from .vocabulary import check_toy_prompt

    for key, value in LEGACY_SETTINGS.items():
        settings.setdefault(key, value)
    for key, value in LEGACY_MODEL_SETTINGS.items():
        settings["model"].setdefault(key, value)
    check_device(settings["model"]["device"], "--device")
    try:
        schedule = schedule_from_data(settings["schedule"], "the schedule")
        if settings["model"]["model"] is None:
            for seg in schedule.segments:
                check_toy_prompt(seg.prompt)
        policy = make_policy(settings["policy"], settings["policy_options"])
        bundle = load_bundle(BundleOptions(**settings["model"]))
    except (ValueError, RuntimeError) as e:  # includes WeightFileError; RuntimeError: torch.device("bogus")
        raise UserError(str(e)) from None
    if bundle.threads and next(bundle.model.parameters()).device.type == "cpu":
        torch.set_num_threads(bundle.threads)  # a dispatch-bound tiny model: more threads only contend
    chunk, fps = settings["chunk_frames"], settings["fps"]
    stride = bundle.decoder.temporal_stride
    if settings.get("latent_frames") is not None:
        n_latent = settings["latent_frames"]
        if n_latent % chunk:
            lo = n_latent - n_latent % chunk
            raise UserError(f"--latent-frames must be a multiple of the chunk ({chunk}); "
                            f"use {lo or chunk} or {lo + chunk}")
    else:
        seconds = settings.get("duration") or schedule.total_seconds or DEFAULT_SECONDS
        n_latent = latent_frames_for(seconds, fps, stride, chunk)
    n_chunks = n_latent // chunk
    starts = schedule.start_chunks(chunk * stride / fps)
    if starts[-1] >= n_chunks:
        raise UserError(f"the prompt schedule starts segment {len(starts)} at chunk {starts[-1]}, but the "
                        f"video has only {n_chunks} chunks; lengthen --duration or shorten the schedule")
    reference = settings["noise"] == "reference"
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=chunk, seed=settings["seed"],
                              noise=settings["noise"], noise_frames=n_latent if reference else None)
    _check_prompt_cache(bundle, [seg.prompt for seg in schedule.segments], resuming)
    try:
        texts = [encode_prompt(bundle, seg.prompt, toy=False) for seg in schedule.segments]
        settings.setdefault("attention_requested", settings.get("attention", "default"))
        generator = StreamingGenerator(bundle.model, policy, texts[0], config, decoder=bundle.decoder,
                                       attention=settings.get("attention", "default"),
                                       compile=settings.get("compile", False),
                                       cuda_graphs=settings.get("cuda_graphs", False), fp8=settings.get("fp8"))
        settings["attention"] = generator.attention.name  # "auto" resolved: a resume keeps the kernel
        preflight(policy, bundle.model.rope, chunk, n_chunks)
    except ValueError as e:
        raise UserError(str(e)) from None
    switches = {start: (texts[i], schedule.segments[i].cut) for i, start in enumerate(starts) if i > 0}
    return Prepared(bundle, generator, n_chunks, n_latent, switches, schedule, starts, texts,
                    toy=settings["model"]["model"] is None)


def frame_size(prepared: Prepared) -> tuple[int, int]:
    """(height, width) in pixels of the model's frames."""
    decoder = prepared.bundle.decoder
    stride = getattr(decoder, "spatial_stride", None) or decoder.spatial_factor
    h, w = prepared.bundle.latent_hw
    return h * stride, w * stride


def load_init(settings: dict[str, Any], prepared: Prepared, made: int) -> dict[int, torch.Tensor]:
    """The context chunks of ``--init`` still to commit (none once a resumed run is past them); fills in
    ``settings["init"]`` (checksum, chunks) on a new run and checks the file is the same on a resumed one."""
    from .context import ContextError, load_context
    from .session import file_sha256

    init = settings.get("init")
    if init is None or made >= init.get("chunks", made + 1):
        return {}
    path = Path(init["path"])
    if "sha256" in init and (not path.is_file() or file_sha256(path) != init["sha256"]):
        raise UserError(f"this run starts from {path} (--init), which is missing or changed since the run began; "
                        f"its context is not all committed yet, so the run cannot be resumed without it")
    try:
        context = load_context(path, prepared.bundle.decoder, frame_size(prepared), settings["chunk_frames"],
                               init["max_chunks"])
    except ContextError as e:
        raise UserError(f"--init: {e}") from None
    n = len(context.chunks)
    if n >= prepared.n_chunks:
        raise UserError(f"--init {path} fills {n} chunks, the whole video of {prepared.n_chunks}: give a longer "
                        f"--duration, or fewer --init-chunks")
    if "sha256" not in init:
        settings["init"] = {**init, "sha256": file_sha256(path), "chunks": n, "kind": context.kind,
                            "frames": context.frames}
    elif n != init["chunks"]:
        raise UserError(f"{path} (--init) now gives {n} context chunks where the run recorded {init['chunks']}")
    return context.by_chunk(made)


def checkpoint_bytes(gen: Any) -> int:
    """What one checkpoint writes at most: the cache as allocated (a bounded cache allocates its whole
    capacity up front), the latents a recaching policy keeps, the decoder's state, and slack."""
    cache = gen.cache
    capacity = cache.policy.capacity_frames(gen.config.chunk_frames) or gen.config.chunk_frames
    latent_frame = gen.model.config.in_dim * math.prod(gen.config.latent_hw) * gen.config.batch * 4
    latents = capacity * latent_frame if cache.policy.recaches_on_switch else 0
    decoder = 0
    if gen.decoder is not None and hasattr(gen.decoder, "state_dict"):
        decoder = sum(t.numel() * t.element_size() for t in gen.decoder.state_dict().values())
    return cache.nbytes() + latents + decoder + CHECKPOINT_SLACK_BYTES


# --------------------------------------------------------------------------- statistics
def stats_header(gen: Any, settings: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    return {"memrope": __version__, "run": json.loads(json.dumps(gen.describe(), default=str)),
            "attention": {"kernel": gen.attention.name, "auto_timings_ms": gen.attention.timings_ms},
            "video": settings["video"], "noise": settings["noise"], "pixels": settings["model"]["pixels"],
            "lora_mode": settings["model"]["lora_mode"] if settings["model"].get("lora") else None,
            "prompts": settings["schedule"], "prompt_starts": prepared.starts}


# --------------------------------------------------------------------------- sinks
class DirectSink:
    """Frames straight into one video file."""

    def __init__(self, out: Path, fps: int, crf: int | None):
        from .video import DEFAULT_CRF, VideoWriter

        self.writer = VideoWriter(out, fps=fps, crf=DEFAULT_CRF if crf is None else crf)

    def chunk(self, result, stats: dict[str, Any]) -> None:
        self.writer.write(result.frames[0])

    def checkpoint_due(self, chunks_done: int) -> bool:
        return False

    def checkpoint(self) -> None:
        """Nothing to save: a direct file is not resumable (see --checkpoint-every)."""

    def finish(self, complete: bool) -> int:
        self.writer.close()
        return self.writer.frames_written


class SessionSink:
    """Segments, the chunk log and checkpoints in a run directory; the final video is assembled from the
    segments. Holds at most one checkpoint interval of latents (``--save-latents``), nothing per run."""

    def __init__(self, run: RunDirectory, manifest: Manifest, logs, generator, out: Path, settings: dict[str, Any],
                 summary: RunSummary):
        self.run, self.manifest, self.logs, self.generator, self.out = run, manifest, logs, generator, out
        self.summary = summary
        self.fps, self.every = settings["fps"], settings["checkpoint_every"]
        self.save_latents, self.crf = settings.get("save_latents", False), settings["video"].get("crf")
        self.suffix = video_suffix(settings)
        self.writer = None
        self.first_chunk = manifest.chunks_done
        self.chunks = 0
        self.latents: list[torch.Tensor] = []

    def chunk(self, result, stats: dict[str, Any]) -> None:
        from .video import DEFAULT_CRF, VideoWriter

        if self.writer is None:
            self.first_chunk, self.chunks = result.index, 0
            self.writer = VideoWriter(self.run.segment_path(f"seg_{result.index:06d}{self.suffix}"), fps=self.fps,
                                      crf=DEFAULT_CRF if self.crf is None else self.crf)
        frames = result.frames[0]
        self.writer.write(frames)
        stats["frames_sha256"] = hashlib.sha256(frames.cpu().numpy().tobytes()).hexdigest()
        self.logs[1].append(stats)
        self.chunks += 1
        if self.save_latents:
            self.latents.append(result.latents.detach().cpu())

    def checkpoint_due(self, chunks_done: int) -> bool:
        return self.every > 0 and chunks_done % self.every == 0

    def checkpoint(self) -> None:
        if self.writer is None:
            return
        start = time.perf_counter()
        self.writer.close(sync=True)
        name = f"seg_{self.first_chunk:06d}{self.suffix}"
        if self.save_latents:
            from safetensors.torch import save_file

            save_file({"latents": torch.cat(self.latents, dim=2).contiguous()},
                      str(self.run.segment_path(name).with_suffix(".latents.safetensors")))
        tensors, data = self.generator.state_dict()
        self.run.checkpoint(self.manifest, Segment(name, self.first_chunk, self.chunks, self.writer.frames_written),
                            self.logs, tensors, data)
        self.writer, self.latents = None, []
        self.summary.add_checkpoint((time.perf_counter() - start) * 1e3)

    def finish(self, complete: bool) -> int:
        self.checkpoint()
        if complete:
            self.manifest.complete = True
            self.run.write_manifest(self.manifest)
        for log in self.logs:
            log.close()
        return self.run.assemble(self.manifest, self.out)


# --------------------------------------------------------------------------- resuming
@dataclass
class OpenRun:
    """A run directory checked for resuming; nothing in it has been changed yet."""

    run: RunDirectory
    manifest: Manifest
    legacy: tuple | None = None  # (segment lines, chunk lines) of a version-1 run, written on resume


def migrate_v1_settings(old: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Version-1 settings -> current ones: destinations dropped (never trusted from a manifest), the
    schedule (frozen by version 1 too) kept, the codec version 1 always used made explicit."""
    settings = {k: v for k, v in old.items() if k not in ("out", "stats", "run_dir", "prompts_file", "prompt")}
    settings.setdefault("video", {"codec": "h264", "crf": 18})
    settings.update({k: settings.get(k, v) for k, v in LEGACY_SETTINGS.items()})
    settings["model"] = {**LEGACY_MODEL_SETTINGS, **settings.get("model", {})}
    if not isinstance(settings.get("schedule"), list):
        raise SessionError("the version-1 manifest holds no frozen prompt schedule; it cannot be resumed")
    return settings, settings_hash(settings, length=False)


def open_run(path: Path) -> OpenRun:
    """Read and check a run directory for ``--resume`` (a one-line ``UserError`` if it cannot be used)."""
    run = RunDirectory(path)
    try:
        data = run.read_manifest()
        if isinstance(data, dict) and data.get("version") == LEGACY_VERSION:
            manifest, segment_lines, chunk_lines = legacy_manifest(run, data, migrate_v1_settings)
            for seg in segment_lines:
                if not run.segment_path(seg["name"]).is_file():
                    raise SessionError(f"{run.path / MANIFEST} names segment {seg['name']}, which is missing")
            return OpenRun(run, manifest, (segment_lines, chunk_lines))
        manifest = run.load(data)
    except SessionError as e:
        raise UserError(str(e)) from None
    if settings_hash(manifest.settings, length=False) != manifest.settings_hash:
        raise UserError(f"{run.path / MANIFEST}: its settings do not match their recorded hash (edited by hand?); "
                        f"the run cannot be resumed as it was made")
    return OpenRun(run, manifest)


def resume_outputs(run_dir: Path, settings: dict[str, Any], out: str | None, stats: str | None) -> Outputs:
    """Where a resumed run puts its results: the command line's ``--out``/``--stats``, else ``OUT`` for a
    run directory named ``OUT.run`` (the default of ``--out OUT``), else a video inside the run directory.
    Derived from the path the user typed, never from the manifest."""
    suffix = video_suffix(settings)
    if out is None:
        name = run_dir.resolve().name
        sibling = run_dir.resolve().with_name(name.removesuffix(".run"))
        out = sibling if name.endswith(".run") and sibling.suffix.lower() == suffix else \
            RunDirectory(run_dir).file(RESUMED_OUT + suffix)
    if Path(out).suffix.lower() != suffix:
        raise UserError(f"--out must name a {suffix} file for this run, got {out}")
    return Outputs(Path(out), None if stats is None else Path(stats), run_dir)


# --------------------------------------------------------------------------- the run
def preflight_outputs(settings: dict[str, Any], outputs: Outputs, new_run_dir: bool) -> None:
    """Every destination checked before anything is written."""
    out = check_output_file(outputs.out, "--out", (video_suffix(settings),))
    if outputs.stats is not None:
        stats = check_output_file(outputs.stats, "--stats")
        if stats.resolve() == out.resolve():
            raise UserError("--stats and --out name the same file")
    if new_run_dir and outputs.run_dir is not None:
        check_output_dir(outputs.run_dir, "--run-dir")
        if (outputs.run_dir / MANIFEST).exists():
            raise UserError(f"{outputs.run_dir} already holds a run; continue it with --resume {outputs.run_dir} "
                            f"or choose another --run-dir")


def resume_chunks(resume: OpenRun, prepared: Prepared) -> int:
    """The length, in chunks, the saved run was planned with."""
    saved = resume.manifest.settings
    chunk = saved["chunk_frames"]
    if saved.get("latent_frames") is not None:
        return saved["latent_frames"] // chunk
    seconds = saved.get("duration") or prepared.schedule.total_seconds or DEFAULT_SECONDS
    return latent_frames_for(seconds, saved["fps"], prepared.bundle.decoder.temporal_stride, chunk) // chunk


def _already_complete(resume: OpenRun, outputs: Outputs, settings: dict[str, Any], prepared: Prepared) -> int:
    """A finished run asked for again at its length: its video (if missing) and statistics, nothing else."""
    run, manifest = resume.run, resume.manifest
    message = f"memrope: {run.path} is already complete ({manifest.chunks_done} chunks)"
    if resume.legacy is None:
        if not outputs.out.exists():
            frames = run.assemble(manifest, outputs.out)
            message += f"; {frames} frames in {outputs.out}"
        if outputs.stats is not None:
            summary = RunSummary(WARMUP_CHUNKS)
            for record in read_records(run.file(CHUNKS_LOG), manifest.chunks_log):
                summary.add(record)
            stats = StatsFile(outputs.stats, stats_header(prepared.generator, settings, prepared))
            stats.copy_log(run.file(CHUNKS_LOG), manifest.chunks_log)
            stats.finish(summary.to_json(0.0, peak_rss_mb()))
            message += f"; statistics in {outputs.stats}"
    print(message + "; a longer --duration extends it", file=sys.stderr)
    return 0


def generate(settings: dict[str, Any], outputs: Outputs, resume: OpenRun | None = None,
             length: dict[str, Any] | None = None, progress: bool = True,
             on_chunk: Callable[[dict], None] | None = None) -> int:
    """Run (or continue) a generation; returns the process exit status."""
    settings = dict(settings)
    if length:
        settings["latent_frames"], settings["duration"] = length.get("latent_frames"), length.get("duration")
    preflight_outputs(settings, outputs, new_run_dir=resume is None)
    prepared = prepare(settings, resuming=resume is not None)
    gen = prepared.generator
    manifest = resume.manifest if resume else None
    done = manifest.chunks_done if manifest else 0
    out, run_dir = outputs.out, outputs.run_dir
    if resume is not None:
        if length and settings["noise"] == "reference" and prepared.n_chunks != resume_chunks(resume, prepared):
            raise UserError(f"{run_dir} draws the reference's noise (--noise reference: the whole video's initial "
                            f"noise first), which depends on the video's length; it cannot be made longer or "
                            f"shorter: start a new run")
        if prepared.n_chunks < done:
            raise UserError(f"{run_dir} already holds {done} chunks; a run cannot be shortened: give a --duration "
                            f"or --latent-frames of at least {done * settings['chunk_frames']} latent frames")
        if done:
            try:
                tensors, data = resume.run.load_state(manifest)
                gen.load_state_dict(tensors, data)
            except (SessionError, ValueError, KeyError, RuntimeError) as e:
                raise UserError(f"{run_dir}: its saved state does not match its run ({e}); it cannot be resumed") \
                    from None
        if gen.chunks_emitted != done:
            raise UserError(f"{run_dir}: state is at chunk {gen.chunks_emitted} but the manifest at {done}")
        if manifest.complete and prepared.n_chunks == done:
            return _already_complete(resume, outputs, settings, prepared)
    context = load_init(settings, prepared, gen.cache.clock.chunks)
    if run_dir is not None:
        check_free_space(run_dir, checkpoint_bytes(gen), "one checkpoint of this run", "--run-dir")
    # ------------------------------------------------------------ the first write
    summary = RunSummary(WARMUP_CHUNKS)
    if run_dir is not None:
        run = RunDirectory(run_dir)
        if resume is None:
            try:
                manifest, *logs = run.create(settings, settings_hash(settings, length=False))
            except SessionError as e:
                raise UserError(str(e)) from None
        else:
            if resume.legacy is not None:
                write_migrated(run, manifest, *resume.legacy)
                print(f"memrope: {run_dir}: converted its version-1 manifest to version 2", file=sys.stderr)
            run.discard_unfinished(manifest)
            logs = run.open_logs(manifest)
            if manifest.complete or manifest.settings != settings:
                manifest.settings, manifest.complete = settings, False  # a longer run: extended from here
                manifest.settings_hash = settings_hash(settings, length=False)
                run.write_manifest(manifest)
            for record in read_records(run.file(CHUNKS_LOG), manifest.chunks_log):
                summary.add(record)
        sink = SessionSink(run, manifest, logs, gen, out, settings, summary)
    else:
        sink = DirectSink(out, settings["fps"], settings["video"].get("crf"))
    stats_file = StatsFile(outputs.stats, stats_header(gen, settings, prepared)) \
        if outputs.stats is not None and run_dir is None else None
    n_video = 1 + gen.decoder.temporal_stride * (prepared.n_latent - 1)
    print(f"memrope: {prepared.bundle.name}, policy {settings['policy']}, seed {settings['seed']}, "
          f"{prepared.n_latent} latent frames = {n_video} frames ({n_video / settings['fps']:.1f} s at "
          f"{settings['fps']} fps) -> {out}" + (f", resuming at chunk {done}" if done else ""), file=sys.stderr)
    from tqdm import tqdm

    start = time.perf_counter()
    produced = 0
    status = 0
    try:
        with torch.inference_mode(), StopFlag() as stop, tqdm(total=prepared.n_chunks, initial=done, unit="chunk",
                                                             disable=not progress, file=sys.stderr) as bar:
            # the prompt of the last chunk generated is the generator's (LiveStream.align_text)
            for result in prepared.stream(settings.get("overlap_decode", True), context):
                if not torch.isfinite(result.latents).all():  # one host sync per chunk, by design
                    raise RunFailure(f"non-finite values (NaN/inf) in the latents of chunk {result.index}; "
                                     f"stopped before writing it" + (f", last good state kept in {run_dir}"
                                                                     if run_dir else ""))
                sink.chunk(result, result.stats)
                summary.add(result.stats)
                if stats_file is not None:
                    stats_file.chunk(result.stats)
                produced += result.frames.shape[1] if result.frames is not None else 0
                if on_chunk:
                    on_chunk(result.stats)
                if sink.checkpoint_due(result.index + 1) or stop.signal is not None:
                    sink.checkpoint()
                bar.set_postfix(fps=f"{produced / (time.perf_counter() - start):.1f}",
                                pos=result.stats["max_frame_pos"])
                bar.update(1)
                if stop.signal is not None:
                    status = EXIT_INTERRUPTED
                    break
        frames = sink.finish(complete=status == 0)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing ({e.strerror}); " + (
                f"the run can continue from its last checkpoint: free space, then memrope generate --resume "
                f"{run_dir}" if run_dir else "use --checkpoint-every N to make long runs resumable")) from None
        raise
    except RunFailure:
        if isinstance(sink, DirectSink):
            sink.finish(complete=False)
        raise
    total = time.perf_counter() - start
    result_summary = {**summary.to_json(total, peak_rss_mb()),
                      "fps_this_session": round(produced / total, 2) if total > 0 else None}
    if status == EXIT_INTERRUPTED:
        where = f"; continue with: memrope generate --resume {run_dir}" if run_dir else \
            " (not resumable: use --checkpoint-every N)"
        print(f"memrope: interrupted after chunk {summary.chunks}; {frames} frames in {out}{where}", file=sys.stderr)
    else:
        print(f"memrope: wrote {frames} frames in {total:.1f} s ({result_summary['fps_this_session']} fps this "
              f"session), peak RSS {result_summary['peak_rss_mb']} MB", file=sys.stderr)
    if outputs.stats is not None:
        if stats_file is None:
            stats_file = StatsFile(outputs.stats, stats_header(gen, settings, prepared))
            stats_file.copy_log(sink.run.file(CHUNKS_LOG), sink.manifest.chunks_log)
        stats_file.finish(result_summary)
    return status
