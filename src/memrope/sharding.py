"""Data-parallel scale-out: shard a list of work items (prompts, videos) over ``torchrun`` ranks, resumable.

Rank ``r`` of ``world`` takes the items ``i`` with ``i % world == r``: the shards are disjoint and
together cover every item. Each item ``i`` has one output file (``output_name(i, prompt)``)
and, once that file is complete, a done-marker next to it (``<output>.done``, JSON). An item
whose output file and marker both exist is skipped, so a crashed or preempted job is resumed by
running the same command again; an output without a marker (a crash mid-write) is regenerated.
With ``identity`` (the hash of the settings that define item ``i``'s output, see
``generate_options.settings_hash``) a marker counts only if it records the same hash: an output
made with other settings is never taken for done. The output folder is created for the first item
written, and removed again if that item fails before writing anything.

Runs under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment; the process group uses the
``gloo`` backend unless told otherwise, so CPU-only nodes work) or as a single plain process.
After all ranks finish, rank 0 gathers every rank's record and writes ``manifest.json``.
The commands built on it: ``memrope generate-many`` (:mod:`memrope.distributed`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

MARKER_SUFFIX = ".done"
MANIFEST = "manifest.json"


def shard(n_prompts: int, rank: int, world: int) -> list[int]:
    """Indices of the prompts rank ``rank`` of ``world`` generates: ``i % world == rank``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {rank} of {world}")
    if n_prompts < 0:
        raise ValueError(f"n_prompts must be >= 0, got {n_prompts}")
    return list(range(rank, n_prompts, world))


def default_output_name(index: int, prompt: str) -> str:
    return f"{index:06d}.mp4"


def marker_path(output: Path) -> Path:
    return output.with_name(output.name + MARKER_SUFFIX)


def is_done(output: Path, identity: str | None = None) -> bool:
    """``output`` and its marker exist (and, given ``identity``, the marker records that settings hash)."""
    if not (output.is_file() and marker_path(output).is_file()):
        return False
    if identity is None:
        return True
    try:
        return json.loads(marker_path(output).read_text()).get("settings_hash") == identity
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def write_marker(output: Path, record: dict[str, Any]) -> None:
    """Atomically write the done-marker (temp file + rename): a marker is never half-written."""
    marker = marker_path(output)
    tmp = marker.with_name(marker.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, marker)


@dataclass
class ShardReport:
    rank: int
    world: int
    assigned: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0


def env_rank_world() -> tuple[int, int]:
    """(rank, world) from torchrun's environment, or (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(backend: str = "gloo") -> bool:
    """Join torchrun's process group when there is more than one rank; True if this call created it."""
    _, world = env_rank_world()
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend=backend)
    return True


def run_sharded(
    prompts: Sequence[str],
    out_dir: Path | str,
    generate_one: Callable[[int, str, Path], None],
    rank: int | None = None,
    world: int | None = None,
    output_name: Callable[[int, str], str] = default_output_name,
    backend: str = "gloo",
    identity: Callable[[int, str], str] | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> ShardReport:
    """Generate this rank's share of ``prompts`` into ``out_dir``; skip prompts already done.

    ``generate_one(index, prompt, output_path)`` must write ``output_path``; the marker is written
    after it returns (and only if the file exists). ``rank``/``world`` default to torchrun's
    environment; with more than one rank the process group is joined (``backend``, gloo by
    default), every rank's record is gathered at the end and rank 0 writes ``manifest.json``.
    """
    env_rank, env_world = env_rank_world()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    out = Path(out_dir)
    created = init_process_group(backend) if world > 1 else False
    report = ShardReport(rank=rank, world=world, assigned=shard(len(prompts), rank, world))
    start = time.perf_counter()
    try:
        for i in report.assigned:
            path = out / output_name(i, prompts[i])
            key = identity(i, prompts[i]) if identity is not None else None
            if is_done(path, key):
                report.skipped.append(i)
                continue
            t0 = time.perf_counter()
            made = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            try:
                generate_one(i, prompts[i], path)
            except BaseException:
                if made and not any(out.iterdir()):  # a failed first item leaves no empty folder behind
                    out.rmdir()
                raise
            if not path.is_file():
                raise RuntimeError(f"generate_one did not write {path} for prompt {i}")
            record = {"index": i, "prompt": prompts[i], "rank": rank, "world": world,
                      "seconds": round(time.perf_counter() - t0, 3), "host": socket.gethostname()}
            write_marker(path, record if key is None else {**record, "settings_hash": key})
            report.generated.append(i)
        report.seconds = time.perf_counter() - start
        records = [asdict(report)]
        if world > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, records[0])
            records = gathered
        if rank == 0:
            write_manifest(out, prompts, records, output_name, identity, manifest_extra)
    finally:
        if created:  # all_gather_object above is the closing rendezvous; no barrier after a failure
            dist.destroy_process_group()
    return report


def write_manifest(out: Path, prompts: Sequence[str], records: list[dict], output_name, identity=None,
                   extra: dict[str, Any] | None = None) -> dict:
    done = [i for i in range(len(prompts)) if is_done(out / output_name(i, prompts[i]),
                                                      identity(i, prompts[i]) if identity else None)]
    manifest = {
        **(extra or {}),
        "prompts": len(prompts),
        "done": len(done),
        "missing": [i for i in range(len(prompts)) if i not in set(done)],
        "ranks": sorted(records, key=lambda r: r["rank"]),
        "outputs": {i: output_name(i, prompts[i]) for i in range(len(prompts))},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
