"""PNG plots with matplotlib's Agg backend (no display needed): curves over time per method,
anchor similarity, motion over time, the segment x segment similarity map, thumbnail strips."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from memrope.eval.evaluation import Evaluation  # noqa: E402

DPI = 100
SECONDS_PER_MINUTE = 60.0
# Motion is plotted as a moving average over this many seconds (raw per-pair flow is noisy).
MOTION_SMOOTHING_SECONDS = 2.0
ANCHOR_METRICS = ("pixel_anchor_similarity", "subject_anchor_similarity", "background_anchor_similarity")
PANEL_COLUMNS = 4


# Videos shorter than this are plotted in seconds, longer ones in minutes.
SECONDS_AXIS_LIMIT = 120.0


class _TimeAxis:
    """Seconds for short videos, minutes for long ones (chosen once per evaluation)."""

    def __init__(self, ev: Evaluation) -> None:
        longest = max((v.analysis.seconds_evaluated for v in ev.videos), default=0.0)
        self.minutes = longest > SECONDS_AXIS_LIMIT
        self.label = "minutes" if self.minutes else "seconds"

    def __call__(self, seconds) -> np.ndarray:
        return np.asarray(seconds) / (SECONDS_PER_MINUTE if self.minutes else 1.0)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def method_curve(ev: Evaluation, method: str, name: str):
    """(segment midpoints s, mean, min, max, n videos) of one metric over a method's videos (prompts),
    aligned by segment index and cut to the shortest video; None when no video has the metric."""
    curves = [v.analysis for v in ev.videos if v.method == method and name in v.analysis.per_segment]
    if not curves:
        return None
    length = min(a.n_segments for a in curves)
    stack = np.stack([a.per_segment[name][:length] for a in curves])  # (videos, segments)
    a0 = curves[0]
    mid = 0.5 * (a0.segment_start_s[:length] + a0.segment_end_s[:length])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN segments stay NaN
        return mid, np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0), len(curves)


def plot_metrics_over_time(ev: Evaluation, path: Path) -> Path:
    """One panel per metric, one line per method: the mean over its videos (prompts) with the
    min-max band across them (segment midpoints, minutes)."""
    names = [
        n
        for n in dict.fromkeys(n for v in ev.videos for n in v.analysis.per_segment)
        if any(np.isfinite(v.analysis.per_segment.get(n, np.array([np.nan]))).any() for v in ev.videos)
    ]
    axis = _TimeAxis(ev)
    rows = max(1, math.ceil(len(names) / PANEL_COLUMNS))
    fig, axes = plt.subplots(rows, PANEL_COLUMNS, figsize=(4 * PANEL_COLUMNS, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for method in ev.methods:
            curve = method_curve(ev, method, name)
            if curve is None:
                continue
            t, mean, low, high, n = curve
            (line,) = ax.plot(axis(t), mean, label=method if n == 1 else f"{method} (mean of {n})", lw=1.2)
            if n > 1:
                ax.fill_between(axis(t), low, high, color=line.get_color(), alpha=0.2, lw=0)
        spec = ev.specs.get(name)
        arrow = (
            ""
            if spec is None or spec.higher_is_better is None
            else (" (higher better)" if spec.higher_is_better else " (lower better)")
        )
        ax.set_title(name + arrow, fontsize=9)
        ax.set_xlabel(axis.label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if ev.videos:
        axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def plot_anchor_similarity(ev: Evaluation, path: Path) -> Path:
    axis = _TimeAxis(ev)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for v in ev.videos:
        a = v.analysis
        for name in ANCHOR_METRICS:
            values = a.per_segment.get(name)
            if values is not None and np.isfinite(values).any():
                ax.plot(axis(a.segment_start_s), values, label=f"{a.label}: {name}", lw=1.2)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("similarity to segment 0")
    ax.legend(fontsize=7)
    ax.set_title("Anchor similarity (drift from the opening segment)")
    return _save(fig, path)


def plot_motion(ev: Evaluation, path: Path) -> Path:
    axis = _TimeAxis(ev)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for v in ev.videos:
        a = v.analysis
        t, m = a.motion_times_s, a.motion_values
        if t.size:
            dt = np.median(np.diff(t)) if t.size > 1 else 1.0
            k = min(m.size, max(1, int(round(MOTION_SMOOTHING_SECONDS / max(dt, 1e-9)))))
            kernel = np.ones(k)
            # divide by the number of samples under the window so the ends are not pulled towards 0
            smooth = np.convolve(m, kernel, mode="same") / np.convolve(np.ones_like(m), kernel, mode="same")
            ax.plot(axis(t), smooth, label=a.label, lw=1.0)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("mean flow (px / frame)")
    ax.set_title(f"Motion over time ({MOTION_SMOOTHING_SECONDS:g} s moving average)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_similarity_heatmap(ev: Evaluation, index: int, path: Path) -> Path:
    a = ev.videos[index].analysis
    fig, ax = plt.subplots(figsize=(5, 4.3))
    axis = _TimeAxis(ev)
    end = float(axis(a.segment_end_s[-1]))
    im = ax.imshow(
        a.similarity,
        vmin=-1,
        vmax=1,
        cmap="viridis",
        origin="lower",
        extent=(0, end, 0, end),
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, label="best-match thumbnail correlation")
    ax.set_xlabel(axis.label)
    ax.set_ylabel(axis.label)
    ax.set_title(f"{a.label}\nsegment x segment similarity", fontsize=8)
    return _save(fig, path)


def plot_thumbnail_strip(ev: Evaluation, index: int, path: Path) -> Path:
    a = ev.videos[index].analysis
    thumbs = a.thumbnails
    fig, axes = plt.subplots(1, len(thumbs), figsize=(1.8 * len(thumbs), 1.6), squeeze=False)
    for ax, (t, img) in zip(axes.flat, thumbs, strict=True):
        ax.imshow(img)
        ax.set_title(f"{t / SECONDS_PER_MINUTE:.1f} min", fontsize=7)
        ax.axis("off")
    fig.suptitle(a.label, fontsize=8)
    return _save(fig, path)


def write_plots(ev: Evaluation, out_dir: Path) -> dict[str, Path]:
    """All plots into out_dir/plots; returns {title: path} in report order."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "Metrics over time": plot_metrics_over_time(ev, plot_dir / "metrics_over_time.png"),
        "Anchor similarity": plot_anchor_similarity(ev, plot_dir / "anchor_similarity.png"),
        "Motion over time": plot_motion(ev, plot_dir / "motion.png"),
    }
    for i, v in enumerate(ev.videos):
        slug = f"{i:02d}"
        out[f"Similarity map: {v.analysis.label}"] = plot_similarity_heatmap(
            ev, i, plot_dir / f"heatmap_{slug}.png"
        )
        out[f"Thumbnails per minute: {v.analysis.label}"] = plot_thumbnail_strip(
            ev, i, plot_dir / f"strip_{slug}.png"
        )
    return out
