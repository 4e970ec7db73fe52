"""The options of ``memrope generate``, shared by every command that generates (generate, compare,
generate-many).

``add_generate_arguments`` puts them on a parser; ``request_from_args`` turns the parsed options into
the run's *settings* (plain, JSON-serialisable: what a run directory's manifest stores for
``--resume``) and its *outputs* (where this command writes the video, the statistics and the run
directory: the command line's choice, never stored as trusted in a manifest).

Every option defaults to ``None`` in the parser so that the options a user actually gave are known
(``explicit``): a resumed run refuses those that conflict with what it saved, and the options that
only a real model reads are refused without ``--model``. The real defaults are ``DEFAULTS``, shown
in ``--help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .errors.parser import non_negative_int, positive_float, positive_int

ATTENTION_CHOICES = ("default", "auto", "flash", "efficient", "cudnn", "math")
"""``models.attention.CHOICES``, spelled out so that ``--help`` does not import torch (a test holds them equal)."""
MODEL_CHOICES = ("self-forcing", "longlive", "diffusers")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
NOISE_CHOICES = ("chunk", "reference")  # generate.NOISE_MODES
PIXEL_CHOICES = ("truncate", "round")  # models.pixels.PIXEL_MODES
LORA_MODE_CHOICES = ("merged", "unmerged")  # models.lora_linear.LORA_MODES
FP8_CHOICES = ("dynamic", "weight")  # models.fp8
DECODER_CHOICES = ("vae", "taehv")

DEFAULT_PROMPT = "a red disc and a blue square bounce on a navy gradient"  # in the toy world's vocabulary
DEFAULT_CRF = 18  # x264 quality: visually lossless-ish
MAX_CRF = 51  # x264's range is 0..51
REAL_MODEL_HW = (480, 832)  # Wan2.1-T2V-1.3B's trained 832x480
DEFAULTS: dict[str, Any] = {
    "policy": "memrope", "seed": 0, "prompt": DEFAULT_PROMPT, "chunk_frames": 3, "fps": 16, "crf": DEFAULT_CRF,
    "attention": "default", "height": REAL_MODEL_HW[0], "width": REAL_MODEL_HW[1], "device": "auto",
    "dtype": "auto", "noise": "chunk", "pixels": "truncate", "lora_mode": "merged", "init_chunks": 4,
    "decoder": "vae",
}
MODEL_ONLY = {"checkpoint": "--checkpoint", "wan_dir": "--wan-dir", "lora": "--lora", "lora_rank": "--lora-rank",
              "lora_alpha": "--lora-alpha", "lora_mode": "--lora-mode", "use_ema": "--no-ema", "height": "--height",
              "width": "--width", "prompt_cache": "--prompt-cache"}
"""Options only a real model reads: refused without ``--model`` instead of silently ignored."""

LENGTH_KEYS = ("latent_frames", "duration")
NOT_OUTPUT = ("save_latents", "overlap_decode")  # proven not to change a frame (tests/test_generate.py)
NOT_OUTPUT_MODEL = ("prompt_cache",)  # a location, not a setting


def crf_value(value: str) -> int:
    n = non_negative_int(value)
    if n > MAX_CRF:
        raise argparse.ArgumentTypeError(f"expected a CRF in 0..{MAX_CRF}, got {n}")
    return n


def _d(key: str) -> str:
    return f" (default: {DEFAULTS[key]})"


def add_generate_arguments(gen: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every option of ``memrope generate`` on ``gen`` (a parser or a sub-parser)."""
    gen.add_argument("--policy", help="cache policy or preset (see `memrope policies`)" + _d("policy"))
    gen.add_argument("--policy-opt", action="append", metavar="KEY=VALUE",
                     help="policy option, repeatable (e.g. --policy-opt cache_size=12)")
    length = gen.add_mutually_exclusive_group()
    length.add_argument("--latent-frames", type=positive_int, metavar="N",
                        help="latent frames (a multiple of the chunk)")
    length.add_argument("--duration", type=positive_float, metavar="SECONDS",
                        help="seconds of video, rounded up to whole chunks (default: the schedule's total, else 10)")
    gen.add_argument("--seed", type=int, help="generation seed: the noise of chunk k is drawn from (seed, k)"
                     + _d("seed"))
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help='a prompt, or a schedule: "a red disc[10s] | a blue square[20s]" ([5s#]: '
                        'a hard cut). The embedded model knows only its toy world\'s words: see `memrope '
                        f'vocabulary` (default: "{DEFAULT_PROMPT}")')
    prompt.add_argument("--schedule", type=Path, metavar="FILE",
                        help="this video's prompt schedule: a .json/.yaml list of {prompt, seconds, cut}, or a text "
                             "file in the inline syntax (one segment per line)")
    prompt.add_argument("--prompts", type=Path, metavar="FILE",
                        help="not for generate: a list of prompts, one video each, is `memrope generate-many "
                             "--prompts FILE` or `memrope compare --prompts FILE`; one video's schedule is --schedule")
    gen.add_argument("--init", type=Path, metavar="FILE",
                     help="start from an image (.png, .jpg, ...: a still first chunk) or a video (.mp4, .mkv, ...: "
                          "its last frames that make whole chunks): encoded by the model's own encoder and "
                          "committed into the cache as clean context, then continued; the output begins with them")
    gen.add_argument("--init-chunks", type=positive_int, metavar="N",
                     help="most chunks of context a video gives --init" + _d("init_chunks"))
    gen.add_argument("--noise", choices=NOISE_CHOICES,
                     help="chunk: one CPU generator per (seed, chunk); reference: the MemRoPE reference's draws "
                          "(one generator, the whole video's initial noise first, then every re-noise) and its "
                          "sampler arithmetic, drawn chunk by chunk in constant memory" + _d("noise"))
    gen.add_argument("--pixels", choices=PIXEL_CHOICES,
                     help="uint8 quantisation of the decoded frames: truncate (Wan's and Self-Forcing's "
                          "videos) or round" + _d("pixels"))
    gen.add_argument("--chunk-frames", type=positive_int, metavar="N",
                     help="latent frames generated per chunk (the models are trained with 3)" + _d("chunk_frames"))
    gen.add_argument("--fps", type=positive_int, help="frames per second of the video" + _d("fps"))
    gen.add_argument("--out", help="output video: .mp4 (H.264, fragmented, written as chunks decode), or .mkv "
                     "with --lossless")
    gen.add_argument("--stats", help="write per-chunk statistics and a summary as JSON (streamed: per-chunk "
                     "lines never accumulate in memory)")
    gen.add_argument("--crf", type=crf_value, metavar="N",
                     help=f"H.264 quality, 0 (best) .. {MAX_CRF} (smallest); 0 is x264's lossless mode, but in YUV "
                          "4:2:0, so not bit-exact RGB: use --lossless for that" + _d("crf"))
    gen.add_argument("--lossless", action="store_true", default=None,
                     help="write FFV1 in Matroska (--out *.mkv): the decoded frames are exactly the generated ones "
                          "(for evaluation)")
    gen.add_argument("--no-progress", action="store_true", default=None, help="hide the progress bar")
    session = gen.add_argument_group("resumable runs")
    session.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                         help="save the whole generator state every N chunks (and on SIGINT/SIGTERM) in a run "
                              "directory; the video is written as segments and assembled into --out")
    session.add_argument("--run-dir", type=Path, metavar="DIR", help="run directory (default: OUT.run)")
    session.add_argument("--resume", type=Path, metavar="DIR",
                         help="continue the run saved in DIR exactly; other options must agree with it, except "
                              "--duration / --latent-frames (longer: extend the run), --out and --stats (where "
                              "to put the results; default: DIR without .run, or DIR/video.mp4)")
    session.add_argument("--save-latents", action="store_true", default=None,
                         help="also keep the clean latents per segment")
    gen.add_argument("--attention", choices=ATTENTION_CHOICES,
                     help="SDPA kernel the transformer prefers: default (PyTorch's rules), auto (the fastest "
                          "of those that serve this stream's shapes, timed at the start), or one by name"
                     + _d("attention"))
    fast = gen.add_argument_group("steady state (see README, Performance)")
    fast.add_argument("--compile", action="store_true", default=None,
                      help="torch.compile the fused path's block pieces, used once the cache is full (compiles "
                           "during the first steady chunk)")
    fast.add_argument("--cuda-graphs", action="store_true", default=None,
                      help="replay each pass of a chunk as a CUDA graph once the cache is full (eager where "
                           "capture is not possible)")
    fast.add_argument("--fp8", choices=FP8_CHOICES,
                      help="float8 matmul weights through torchao: dynamic (weights and activations, needs compute "
                           "capability >= 8.9) or weight (weights only) (default: off)")
    gen.add_argument("--no-overlap-decode", dest="overlap_decode", action="store_false", default=None,
                     help="decode each chunk before generating the next (default: decode chunk k on a worker "
                     "thread while the transformer runs chunk k+1; same output)")
    model = gen.add_argument_group("model (default: the embedded 64x64 toy model; the options below but "
                                   "--device, --dtype and --decode-device need --model)")
    model.add_argument("--model", choices=MODEL_CHOICES, help="real Wan2.1-T2V-1.3B generator to run")
    model.add_argument("--checkpoint", type=Path, help="self_forcing_dmd.pt, longlive_base.pt or a "
                       "diffusers transformer folder / .safetensors")
    model.add_argument("--wan-dir", type=Path, help="Wan2.1-T2V-1.3B folder (VAE, umT5, tokenizer), "
                       "original or diffusers layout")
    model.add_argument("--lora", type=Path, help="LongLive lora.pt")
    model.add_argument("--lora-mode", choices=LORA_MODE_CHOICES,
                       help="merged: W + s B A folded into the weights (fastest); unmerged: adapters computed "
                            "as PEFT does in the run dtype (LongLive's and the reference's values)" + _d("lora_mode"))
    model.add_argument("--lora-rank", type=positive_int, help="override the LoRA rank (default: the file's)")
    model.add_argument("--lora-alpha", type=positive_float, help="override the LoRA alpha (default: the file's)")
    model.add_argument("--no-ema", dest="use_ema", action="store_false", default=None,
                       help="Self-Forcing: load `generator` instead of `generator_ema`")
    model.add_argument("--height", type=positive_int, help="video height in pixels" + _d("height"))
    model.add_argument("--width", type=positive_int, help="video width in pixels" + _d("width"))
    model.add_argument("--device", help="auto | cpu | cuda | cuda:N" + _d("device"))
    model.add_argument("--dtype", choices=DTYPE_CHOICES,
                       help="transformer dtype; auto: bfloat16 on CUDA, float32 on the CPU" + _d("dtype"))
    model.add_argument("--decode-device", default=None,
                       help="device of the video decoder, e.g. cuda:1: the transformer and the VAE each on "
                            "their own GPU, working at the same time (default: the model's device)")
    model.add_argument("--prompt-cache", type=Path, metavar="DIR",
                       help="folder of cached prompt embeddings (default: inside --wan-dir)")
    model.add_argument("--split-blocks", metavar="DEV,DEV",
                       help="the transformer's blocks over two devices, e.g. cuda:0,cuda:1 (two 24 GB cards): "
                            "first half and embeddings on the first, second half and head on the second (and "
                            "the decoder, unless --decode-device)")
    model.add_argument("--decoder", choices=DECODER_CHOICES,
                       help="video decoder: vae (the model's own: the Wan VAE, the default for evaluation) or "
                            "taehv (the tiny TAEHV autoencoder, taew2_1.pth: far cheaper, lower quality)"
                            + _d("decoder"))
    model.add_argument("--decoder-weights", type=Path, metavar="FILE",
                       help="TAEHV weights for --decoder taehv (default: WAN_DIR/taew2_1.pth)")
    return gen


RESUME_KEYS = {"prompt": "schedule", "policy_opt": "policy_options", "crf": "video", "lossless": "video",
               "init_chunks": "init"}
"""Options whose setting has another name (or is shared with another option)."""
GIVEN_ON_RESUME = {"out", "stats", "no_progress", "latent_frames", "duration", "resume", "prompt_cache"}
"""Options that may accompany ``--resume`` freely: destinations, display, and a new (longer) length."""


def explicit(args: argparse.Namespace) -> dict[str, Any]:
    """The generate options the user gave (the parser's defaults are all None)."""
    return {k: v for k, v in vars(args).items() if v is not None and not k.startswith("_")}


def option_name(dest: str) -> str:
    return {"overlap_decode": "--no-overlap-decode", "use_ema": "--no-ema"}.get(dest, "--" + dest.replace("_", "-"))


@dataclass(frozen=True)
class Outputs:
    """Where one generate command writes; taken from its command line, never from a manifest."""

    out: Path | None = None
    stats: Path | None = None
    run_dir: Path | None = None


def _schedule(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .schedule import load_schedule, parse_inline

    if getattr(args, "prompts", None) is not None:
        raise UserError("memrope generate makes one video: give its prompt with --prompt TEXT or its schedule "
                        "with --schedule FILE; --prompts FILE (one video per prompt) is for `memrope "
                        "generate-many` and `memrope compare`")
    try:
        schedule = load_schedule(args.schedule) if args.schedule is not None else \
            parse_inline(DEFAULT_PROMPT if args.prompt is None else args.prompt)
    except ValueError as e:
        raise UserError(str(e)) from None
    return [vars(seg) for seg in schedule.segments]


def settings_from_args(args: argparse.Namespace, resuming: bool = False) -> dict[str, Any]:
    """The run's settings as plain data (stored in a run directory's manifest for --resume)."""
    from .cache import parse_options

    given = explicit(args)
    if args.model is None and not resuming:
        needs = [MODEL_ONLY[k] for k in MODEL_ONLY if k in given]
        if needs:
            raise UserError(f"{', '.join(needs)} {'needs' if len(needs) == 1 else 'need'} --model (self-forcing, "
                            f"longlive or diffusers); without --model memrope runs its embedded 64x64 toy model, "
                            f"which reads none of them")
    if args.lossless and args.crf is not None:
        raise UserError("--crf sets H.264 quality and --lossless writes FFV1: give one of them")
    try:
        policy_options = parse_options(args.policy_opt or [])
    except ValueError as e:
        raise UserError(str(e)) from None
    path = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
    pick = lambda key: DEFAULTS[key] if getattr(args, key) is None else getattr(args, key)  # noqa: E731
    real = args.model is not None or resuming
    if args.init_chunks is not None and args.init is None:
        raise UserError("--init-chunks needs --init FILE (the image or video the stream starts from)")
    init = {} if args.init is None else \
        {"init": {"path": path(check_init(args.init)), "max_chunks": pick("init_chunks")}}
    return {**init,
        "policy": pick("policy"), "policy_options": policy_options, "seed": pick("seed"),
        "schedule": _schedule(args), "noise": pick("noise"),
        "latent_frames": args.latent_frames, "duration": args.duration,
        "chunk_frames": pick("chunk_frames"), "fps": pick("fps"),
        "checkpoint_every": args.checkpoint_every or 0, "save_latents": bool(args.save_latents),
        "overlap_decode": args.overlap_decode is not False, "attention": pick("attention"),
        "compile": bool(args.compile), "cuda_graphs": bool(args.cuda_graphs), "fp8": args.fp8,
        "video": {"codec": "ffv1"} if args.lossless else {"codec": "h264", "crf": pick("crf")},
        "model": {"model": args.model, "checkpoint": path(args.checkpoint), "wan_dir": path(args.wan_dir),
                  "lora": path(args.lora), "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
                  "use_ema": args.use_ema is not False, "height": pick("height") if real else None,
                  "width": pick("width") if real else None, "device": pick("device"), "dtype": pick("dtype"),
                  "prompt_cache": path(args.prompt_cache), "decode_device": args.decode_device,
                  "pixels": pick("pixels"), "lora_mode": pick("lora_mode"), "decoder": pick("decoder"),
                  "decoder_weights": path(args.decoder_weights), "split_blocks": args.split_blocks},
    }


def check_init(path: Path) -> Path:
    """``--init``: a readable image or video file (its frames are read later, before any write)."""
    from .context import ContextError, kind_of

    try:
        kind_of(path)
    except ContextError as e:
        raise UserError(f"--init {e}") from None
    if not path.is_file():
        raise UserError(f"--init {path} does not exist or is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"--init {path} cannot be read ({e.strerror})") from None
    return path


def video_suffix(settings: dict[str, Any]) -> str:
    return ".mkv" if settings["video"]["codec"] == "ffv1" else ".mp4"


def outputs_from_args(args: argparse.Namespace, settings: dict[str, Any]) -> Outputs:
    """The command's destinations, checked for their kind (the writability checks are run.preflight's)."""
    suffix = video_suffix(settings)
    if args.out is None:
        raise UserError("--out is required (or --resume DIR to continue a run)")
    out = Path(args.out)
    if out.suffix.lower() != suffix:
        raise UserError(f"--out must name a {suffix} file" + (" (--lossless writes FFV1 in Matroska)"
                                                             if suffix == ".mkv" else
                                                             " (for a lossless .mkv add --lossless)")
                        + f", got {out}")
    run_dir = args.run_dir
    if settings["checkpoint_every"] and run_dir is None:
        run_dir = out.with_name(out.name + ".run")
    if run_dir is not None and not settings["checkpoint_every"]:
        raise UserError("--run-dir needs --checkpoint-every N (a run directory holds checkpoints)")
    return Outputs(out, None if args.stats is None else Path(args.stats), run_dir)


def request_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], Outputs]:
    settings = settings_from_args(args)
    return settings, outputs_from_args(args, settings)


def resume_request(args: argparse.Namespace, saved: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings to continue with, length override) for ``--resume``: the saved settings, a new length if
    one was given, and a ``UserError`` naming every given option that disagrees with the saved run."""
    given = explicit(args)
    if "run_dir" in given:
        raise UserError(f"--run-dir conflicts with --resume {args.resume}: the run directory is {args.resume}")
    if "prompts" in given:
        _schedule(args)  # the one-video error
    asked = settings_from_args(args, resuming=True)
    conflicts = []
    for dest in sorted(set(given) - GIVEN_ON_RESUME):
        key = RESUME_KEYS.get(dest, dest)
        ours, theirs = (asked["model"].get(key), saved.get("model", {}).get(key)) if key in asked["model"] else \
            (asked.get(key), saved.get(key))
        if key == "attention" and saved.get("attention_requested", theirs) == ours:
            continue
        if ours != theirs:
            conflicts.append(f"{option_name(dest)} ({json.dumps(ours, default=str)}; the run has "
                             f"{json.dumps(theirs, default=str)})")
    if conflicts:
        raise UserError(f"{args.resume} was started with other settings: {'; '.join(conflicts)}. Remove "
                        f"{'this option' if len(conflicts) == 1 else 'these options'} to continue it, or start a "
                        f"new run")
    length = {k: given[k] for k in LENGTH_KEYS if k in given}
    return dict(saved), length


def output_settings(settings: dict[str, Any], length: bool = True) -> dict[str, Any]:
    """The settings that define the output (frames and encoding), without locations and switches proven
    not to change a frame; ``length=False`` leaves out the run's length too (a run's identity: a longer
    run with the same identity starts with the same chunks)."""
    out = {k: v for k, v in settings.items() if k not in NOT_OUTPUT and (length or k not in LENGTH_KEYS)}
    out["model"] = {k: v for k, v in settings.get("model", {}).items() if k not in NOT_OUTPUT_MODEL}
    return out


def settings_hash(settings: dict[str, Any], length: bool = True) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`output_settings`."""
    canonical = json.dumps(output_settings(settings, length), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
