"""What each evaluation network costs per minute of video: `python -m memrope.eval.network_cost`.

Every network is built at its real size with random weights (cost does not depend on the values),
timed on its real input at 832x480 (or --width/--height), and its cost is multiplied by how often
VBench's protocol calls it in one minute of video at --fps (16 by default):
- MUSIQ (imaging quality): every frame (60 * fps calls), on the frame resized to longer side 512;
- RAFT (dynamic degree): consecutive frames sampled at ~8 fps within each 2 s clip: 30 clips x
  (sampled - 1) pairs, 20 iterations each;
- AMT-S (motion smoothness): 30 clips x (even frames - 1) interpolations;
- ViCLIP (overall consistency): 6 clips of 10 s, 8 frames at 224 each (the text once per prompt,
  not counted);
- DINO ViT-B/16, CLIP ViT-B/32, CLIP ViT-L/14 (+ the LAION head): every frame (VBench-exact; memrope's
  default --feature-fps 2 runs them on 2 frames per second instead).
The median of --repeats timed calls after one warm-up is used. Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from memrope.eval.config import VBENCH_LONG_CLIP_SECONDS, stride_for
from memrope.eval.vbench_motion import VBENCH_DYNAMIC_FPS
from memrope.eval.vbench_quality import VBENCH_LONG_TEXT_CLIP_SECONDS, VICLIP_FRAMES

SECONDS_PER_MINUTE = 60.0
CLIP_SIDE = 224


def calls_per_minute(fps: float) -> dict[str, float]:
    """How many times VBench's protocol runs each network on one minute of video."""
    frames = SECONDS_PER_MINUTE * fps
    clips = SECONDS_PER_MINUTE / VBENCH_LONG_CLIP_SECONDS
    clip_frames = round(VBENCH_LONG_CLIP_SECONDS * fps)
    sampled = len(range(0, clip_frames, stride_for(fps, VBENCH_DYNAMIC_FPS)))
    evens = len(range(0, clip_frames, 2))
    return {
        "MUSIQ": frames,
        "RAFT": clips * max(0, sampled - 1),
        "AMT-S": clips * max(0, evens - 1),
        "ViCLIP-L/14": SECONDS_PER_MINUTE / VBENCH_LONG_TEXT_CLIP_SECONDS,
        "DINO ViT-B/16": frames,
        "CLIP ViT-B/32": frames,
        "CLIP ViT-L/14": frames,
    }


def _time(fn: Callable[[], object], repeats: int) -> float:
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def workloads(width: int, height: int, device: str) -> dict[str, Callable[[], object]]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

    from memrope.eval.nets.amt import AmtS
    from memrope.eval.nets.flow_common import pad_to_multiple
    from memrope.eval.nets.musiq import MUSIQ
    from memrope.eval.nets.raft import RAFT, pad_for_raft
    from memrope.eval.nets.viclip import ViClip
    from memrope.eval.preprocess import short_side_size
    from memrope.eval.vbench_quality import musiq_inputs

    frame = torch.rand(1, 3, height, width, device=device)
    rgb = (torch.rand(height, width, 3) * 255).byte().numpy()
    musiq, raft, amt = MUSIQ().to(device).eval(), RAFT().to(device).eval(), AmtS().to(device).eval()
    viclip = ViClip().to(device).eval()
    dino = ViTModel(ViTConfig(layer_norm_eps=1e-6), add_pooling_layer=False).to(device).eval()
    clip_b = CLIPVisionModelWithProjection(CLIPVisionConfig(patch_size=32, projection_dim=512)).to(device).eval()
    clip_l = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        projection_dim=768)).to(device).eval()
    a, b = pad_for_raft(frame * 255, frame.flip(-1) * 255)
    even, _ = pad_to_multiple(frame, 16)
    embt = torch.full((1, 1, 1, 1), 0.5, device=device)
    dino_in = torch.rand(1, 3, *short_side_size(height, width, CLIP_SIDE), device=device)
    crop = torch.rand(1, 3, CLIP_SIDE, CLIP_SIDE, device=device)
    video = torch.rand(1, VICLIP_FRAMES, 3, CLIP_SIDE, CLIP_SIDE, device=device)
    return {
        "MUSIQ": lambda: musiq(musiq_inputs(rgb).to(device)),
        "RAFT": lambda: raft(a, b),
        "AMT-S": lambda: amt(even, even.flip(-1), embt),
        "ViCLIP-L/14": lambda: viclip.encode_vision(video),
        "DINO ViT-B/16": lambda: dino(pixel_values=dino_in, interpolate_pos_encoding=True),
        "CLIP ViT-B/32": lambda: clip_b(pixel_values=crop),
        "CLIP ViT-L/14": lambda: clip_l(pixel_values=crop),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memrope.eval.network_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=None, help="comma-separated network names (default: all)")
    args = parser.parse_args(argv)
    calls = calls_per_minute(args.fps)
    work = workloads(args.width, args.height, args.device)
    names = args.only.split(",") if args.only else list(work)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.width}x{args.height} at {args.fps:g} fps, median of {args.repeats}")
    print(f"{'network':<16}{'s / call':>10}{'calls / video min':>20}{'s / video min':>16}")
    total = 0.0
    for name in names:
        seconds = _time(work[name], args.repeats)
        per_minute = seconds * calls[name]
        total += per_minute
        print(f"{name:<16}{seconds:>10.3f}{calls[name]:>20.0f}{per_minute:>16.1f}", flush=True)
    print(f"{'all':<16}{'':>10}{'':>20}{total:>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
