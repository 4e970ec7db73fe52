"""Train the embedded default model on the toy world: ``python -m memrope.world.train``.

Three stages, all on clips drawn on the fly from the procedural world (``clips.ClipSource``, so no
data is stored and every batch is a pure function of the seed and the step):

1. ``FrameAutoencoder``: 64x64 frames -> 8x8x8 latents, MSE + L1 on pixels, with a little noise on
   the latent during training so that the decoder tolerates the diffusion model's imprecision.
   Latent statistics are then measured and frozen (normalised latents for stage 2).
2. The causal Wan transformer (``toy`` config) with a chunk-wise causal flow-matching objective on
   windows of ``--window`` latent frames (default 12 = 4 chunks of 3, MemRoPE's cache size): for
   each chunk of a clip, noise it to a random level (half the time one of the four warped inference
   timesteps, otherwise the shift-5 schedule), predict velocity while the clean previous chunks sit
   in a ``full`` KV cache, MSE on velocity; then commit the clean chunk with a t=0 pass, exactly as
   at inference. Gradients flow through the committed keys/values too. AdamW, cosine decay, an EMA
   of the weights (the EMA is what ships). From ``--canonical-from-step`` on, a share of the clips
   starts from the prompt's canonical state (``canonical_state``) and is scored on every chunk; the
   others start anywhere and are scored from their second chunk on (see ``stage2_batch``).
3. Decoder fine-tuning with the encoder frozen (so stage 2's latents stay valid): object pixels
   weigh more. It does not depend on stage 2 and may run beside it (``--stage decoder``, then
   ``--stage assemble``).

Positions beyond the training window are out of distribution, as for the real models.

A wall-clock budget (``--max-minutes``, stage 1 gets ``--ae-share`` of it) ends training cleanly
and saves; the learning-rate decay follows the budget, so a run on a loaded machine still ends
annealed. The rates actually used are recorded in ``<ckpt-dir>/train_record.json``, and
``--replay <that file>`` reproduces the run step for step without any timing (same seeds, same
data, same rates). Checkpoints are written every ``--ckpt-every`` steps; ``--resume`` continues.
``--smoke`` is a few tiny steps for tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models.toy.autoencoder import FrameAutoencoder
from ..models.toy.default import WEIGHTS_FILE, section
from ..models.toy.text import WorldTextEncoder
from ..models.wan import WanModel
from .clips import ClipConfig, ClipSource
from .train_stages import (
    SMOKE,
    LRSchedule,
    TrainConfig,
    build_transformer,
    diffusion_loss,
    encode_clips,
    run_decoder_stage,
    stage2_batch,
    train_autoencoder,
)

WEIGHTS_PATH = WEIGHTS_FILE  # the shipped weights, beside the default model that loads them


def chain_summary(record: dict) -> dict:
    """Runs and transformer steps of a record and the warm starts nested in it."""
    runs, steps = 0, 0
    while record is not None:
        runs, steps = runs + 1, steps + (record.get("steps_done") or 0)
        record = record.get("init")
    return {"runs": runs, "transformer_steps": steps}


def weights_meta(cfg: TrainConfig, record: dict, text_encoder: str) -> dict:
    return {"model_size": cfg.model_size, "seed": cfg.seed, "steps_done": record.get("steps_done"),
            "chain": chain_summary(record),
            "ae_steps_done": record.get("ae_steps_done"), "dec_steps_done": record.get("dec_steps_done"),
            "text_encoder": text_encoder}


def save_weights(path: Path, model: WanModel, ae: FrameAutoencoder, meta: dict, record: dict | None = None) -> None:
    tensors = {f"transformer.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"autoencoder.{k}": v.detach().contiguous() for k, v in ae.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    metadata = {"memrope": json.dumps(meta)}
    if record is not None:  # everything --replay needs travels with the weights
        metadata["record"] = json.dumps(record)
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def train(cfg: TrainConfig, out: Path, ckpt_dir: Path, resume: bool = False, log=print,
          replay: dict | None = None, init: Path | None = None) -> dict:
    """Run the stages; writes ``out`` (EMA weights + metadata) and returns the training record.

    ``replay``: a previous run's record; its learning rates (hence step counts) are reused exactly.
    ``init``: a weights file to continue from (a warm start): its autoencoder is kept as it is
    (stages 1 and 3 are skipped) and its transformer starts both the trained weights and their EMA;
    the optimiser starts fresh. Its record travels inside this run's record (``init``), so that a
    replay rebuilds the whole chain.
    """
    t0 = time.monotonic()
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 and replay is None else None
    deadline = None if budget is None else t0 + budget
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    record: dict = {"config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "machine": platform.platform(), "processor": platform.processor() or platform.machine()}

    ae_path = ckpt_dir / "autoencoder.safetensors"
    init_tensors = None
    if init is not None:
        init_tensors = load_file(str(init))
        ae = FrameAutoencoder()
        ae.load_state_dict(section(init_tensors, "autoencoder."))
        record.update({"init": read_record(init), "ae_lrs": [], "ae_steps_done": 0})
        log(f"warm start from {init}: its autoencoder and transformer")
    elif resume and ae_path.exists():
        ae = FrameAutoencoder()
        ae.load_state_dict(load_file(str(ae_path)))
        record.update(json.loads((ckpt_dir / "autoencoder.json").read_text()))
        log("resumed autoencoder from checkpoint")
    else:
        ae_budget = None if budget is None else cfg.ae_share * budget
        ae, ae_hist, ae_lrs = train_autoencoder(cfg, log, ae_budget, replay and replay["ae_lrs"])
        ae_stats = {"ae_history": ae_hist, "ae_steps_done": len(ae_lrs), "ae_lrs": ae_lrs,
                    "ae_seconds": round(time.monotonic() - t0, 1)}
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(ae_path))
        (ckpt_dir / "autoencoder.json").write_text(json.dumps(ae_stats))
        record.update(ae_stats)
    ae.eval().requires_grad_(False)

    model = build_transformer(cfg)
    if init_tensors is not None:
        model.load_state_dict(section(init_tensors, "transformer."))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    encoder = WorldTextEncoder(model.config.text_len, model.config.text_dim, roles=cfg.text_roles)
    source = ClipSource(ClipConfig(n_frames=cfg.window, max_objects=cfg.max_objects), seed=cfg.seed + 4)
    history: list[dict] = []
    state_path = ckpt_dir / "transformer_state.pt"
    step, lrs, progress0 = 0, [], 0.0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], json.loads(state["history"])
        lrs, progress0 = json.loads(state["lrs"]), state["progress"]
        log(f"resumed transformer at step {step}")
    remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
    schedule = LRSchedule(cfg.lr, cfg.warmup, cfg.steps, remaining, replay and replay["lrs"],
                          progress0=progress0)
    schedule.used = lrs
    start_step, stage2_t0 = step, time.monotonic()
    model.train()
    running, n_running = 0.0, 0
    while (lr := schedule.lr(step)) is not None:
        schedule.used.append(lr)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr
        video, prompts, first_scored = stage2_batch(source, step, cfg)
        latents = encode_clips(ae, video)
        loss = diffusion_loss(model, latents, encoder.encode(prompts), cfg, gen, first_scored)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        running += loss.item()
        n_running += 1
        step += 1
        if step % cfg.log_every == 0:
            elapsed = time.monotonic() - stage2_t0
            history.append({"step": step, "loss": round(running / n_running, 6), "lr": lr,
                            "minutes": round((time.monotonic() - t0) / 60, 2)})
            log(f"step {step} loss {running / n_running:.5f} lr {lr:.2e} "
                f"{elapsed / (step - start_step):.3f} s/step")
            running, n_running = 0.0, 0
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "step": step, "history": json.dumps(history), "lrs": json.dumps(schedule.used),
                        "progress": schedule.progress}, state_path)
    steps_done = step
    if replay is not None:
        stopped_by = "replay"
    elif steps_done >= cfg.steps:
        stopped_by = "max steps"
    else:
        stopped_by = "wall-clock budget (learning rate annealed over the budget)"
    if running and n_running:
        history.append({"step": step, "loss": round(running / n_running, 6), "lr": schedule.used[-1],
                        "minutes": round((time.monotonic() - t0) / 60, 2)})
    record.update({
        "steps_done": steps_done, "stopped_by": stopped_by, "history": history, "lrs": schedule.used,
        "final_loss": history[-1]["loss"] if history else None,
        "transformer_seconds": round(time.monotonic() - stage2_t0, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "params_transformer": sum(p.numel() for p in model.parameters()),
        "params_autoencoder": sum(p.numel() for p in ae.parameters()),
    })
    if init is None:
        record.update(run_decoder_stage(cfg, ae, log, replay))
    record["total_seconds"] = round(time.monotonic() - t0, 1)
    save_weights(out, ema, ae, weights_meta(cfg, record, encoder.identity), record)
    (ckpt_dir / "train_record.json").write_text(json.dumps(record, indent=1))
    log(f"saved {out} after {steps_done} steps ({record['total_seconds']:.0f} s)")
    return record


def record_config(record: dict) -> TrainConfig:
    """A recorded run's configuration without its timing (for replays). Records written before the
    text encoder had phrase roles lack ``text_roles``: they used the words-only encoder."""
    return TrainConfig(**{"text_roles": False, **record["config"], "max_minutes": 0.0, "dec_minutes": 0.0})


def replay_chain(record: dict, out: Path, ckpt_dir: Path, log) -> dict:
    """Reproduce a recorded run, first rebuilding the run it was warm-started from (recursively)."""
    init = None
    if "init" in record:
        init = ckpt_dir / "init" / "weights.safetensors"
        replay_chain(record["init"], init, ckpt_dir / "init", log)
    cfg = record_config(record)
    log(f"replaying: {len(record.get('ae_lrs', []))} + {len(record['lrs'])} + "
        f"{len(record.get('dec_lrs', []))} steps" + (" (warm start)" if init else ""))
    return train(cfg, out, ckpt_dir, log=log, replay=record, init=init)


def read_record(path: Path) -> dict:
    """A run's record: ``train_record.json``, or the weights file it was stored in."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["record"])
    return json.loads(path.read_text())


def assemble(out: Path, ckpt_dir: Path, cfg: TrainConfig, log) -> None:
    """Weights of stages 1-2 (``out``) + the stage-3 decoder run beside them -> ``out``."""
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["memrope"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tuned = load_file(str(ckpt_dir / "autoencoder_finetuned.safetensors"))
    tensors.update({f"autoencoder.{k}": v for k, v in tuned.items()})
    record = json.loads((ckpt_dir / "train_record.json").read_text())
    record.update(json.loads((ckpt_dir / "decoder.json").read_text()))
    record["config"] = {**record["config"], **{k: v for k, v in asdict(cfg).items() if k.startswith("dec_")}}
    meta["dec_steps_done"] = record["dec_steps_done"]
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"memrope": json.dumps(meta), "record": json.dumps(record)})
    tmp.chmod(0o644)
    tmp.replace(out)
    (ckpt_dir / "train_record.json").write_text(json.dumps(record, indent=1))
    log(f"assembled {out} with the stage-3 decoder ({record['dec_steps_done']} steps)")


def _yes_no(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m memrope.world.train", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny batches (seconds); needs --out, "
                   "so that it never overwrites the shipped weights")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (default: the shipped one)")
    p.add_argument("--ckpt-dir", type=Path, default=Path("toy_train_ckpt"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stage", choices=("all", "decoder", "assemble"), default="all",
                   help="all: stages 1-3 in order (default). decoder: only stage 3, from <ckpt-dir>'s stage-1 "
                   "autoencoder (it does not depend on stage 2, so it may run beside it). assemble: put "
                   "stage 3's decoder into --out and its record into <ckpt-dir>/train_record.json")
    p.add_argument("--init-from", type=Path, help="warm start: continue training the transformer of this "
                   "weights file (its autoencoder is kept); the record keeps the chain for --replay")
    p.add_argument("--replay", type=Path, help="train_record.json of a run: reuse its exact learning rates "
                   "(hence step counts), without any wall-clock dependence; reproduces that run")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name == "model_size":
            continue
        kind = _yes_no if isinstance(value, bool) else type(value)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    args = p.parse_args(argv)
    overrides = dict(SMOKE) if args.smoke else {}
    overrides.update({k: v for k, v in vars(args).items() if k in asdict(defaults) and v is not None})
    cfg = TrainConfig(**overrides)
    if args.smoke and args.out == WEIGHTS_PATH:
        raise SystemExit("--smoke must not overwrite the shipped weights: pass --out")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    log(f"config: {json.dumps(asdict(cfg))}")
    replay = read_record(args.replay) if args.replay else None
    if replay is not None and args.stage == "all":  # the recorded run's own configuration, without timing
        log(f"replaying {args.replay}")
        replay_chain(replay, args.out, args.ckpt_dir, log)
    elif args.stage == "all":
        train(cfg, args.out, args.ckpt_dir, resume=args.resume, log=log, init=args.init_from)
    elif args.stage == "decoder":
        if replay is not None:
            cfg = record_config(replay)
        ae = FrameAutoencoder()
        ae.load_state_dict(load_file(str(args.ckpt_dir / "autoencoder.safetensors")))
        stats = run_decoder_stage(cfg, ae, log, replay)
        save_file({k: v.contiguous() for k, v in ae.state_dict().items()},
                  str(args.ckpt_dir / "autoencoder_finetuned.safetensors"))
        (args.ckpt_dir / "decoder.json").write_text(json.dumps(stats))
        log(f"decoder stage: {stats['dec_steps_done']} steps in {stats['dec_seconds']} s")
    else:
        assemble(args.out, args.ckpt_dir, cfg, log)


if __name__ == "__main__":
    main()
