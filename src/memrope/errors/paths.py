"""Checks on the places a command will write, run before it writes anything.

A command that finds out only after an hour of video that its ``--stats`` file cannot be written has
wasted the hour; one that fails half-way through creating its outputs leaves debris. So every
command checks all its destinations first (a folder in the way, a parent that is a file, no write
permission, a read-only mount, too little free space) and only then creates its first file.
``os.access`` answers for the real user and reports read-only file systems, so the checks hold for
root too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import UserError

MB = 1 << 20


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what creating ``path`` would write into)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path):
        path = path.parent
    return path


def _check_creatable(path: Path, option: str) -> None:
    """``path`` does not exist: the closest existing ancestor must be a writable folder."""
    ancestor = nearest_existing(path)
    if not ancestor.is_dir():
        raise UserError(f"{option} {path}: {ancestor} is a file, not a folder; choose another place")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {ancestor} is not writable (read-only or no "
                        f"permission); choose another place")


def check_output_file(path: str | Path, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file this command may create or replace; a ``UserError`` naming ``option`` if not."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} must name a {' or '.join(suffixes)} file, got {path}")
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name a file")
    if path.exists():
        if not path.is_file():
            raise UserError(f"{option} {path} exists and is not a regular file")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path} cannot be replaced (read-only or no permission); choose another place")
        return path
    _check_creatable(path, option)
    return path


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` as a folder this command may create or write into."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{option} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path} is not writable (read-only or no permission); choose another place")
        return path
    _check_creatable(path, option)
    return path


def check_input_file(path: str | Path, option: str) -> Path:
    """``path`` as an existing, readable regular file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{option} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{option} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option} {path} cannot be read (no permission)")
    return path


def check_free_space(path: str | Path, need_bytes: int, what: str, option: str) -> None:
    """At least ``need_bytes`` free where ``path`` will be written (its closest existing ancestor)."""
    free = shutil.disk_usage(nearest_existing(Path(path))).free
    if free < need_bytes:
        raise UserError(f"not enough free space for {what}: it needs about {need_bytes / MB:.1f} MB, "
                        f"{free / MB:.1f} MB are free under {nearest_existing(Path(path))}; free space or "
                        f"choose another {option}")
