"""write_report: every output of an evaluation, ending in one self-contained HTML page.

The HTML embeds its plots as base64 PNGs so the single file can be mailed or attached to an issue.
Tables: whole-video metrics, drift summaries, per-method means with bootstrap CIs, paired method
comparisons, metric definitions (with implementation tags), skipped metrics and versions.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from memrope.eval.evaluation import Evaluation
from memrope.eval.export import package_versions, write_csvs, write_json
from memrope.eval.plots import write_plots

# Metrics whose drift summary is shown in the HTML (all are in metrics.json).
DRIFT_TABLE_METRICS = (
    "temporal_flickering",
    "imaging_quality",
    "dynamic_degree",
    "motion_smoothness",
    "overall_consistency",
    "dynamic_degree_dis",
    "motion_magnitude",
    "warp_error",
    "sharpness",
    "histogram_drift",
    "seam_score",
    "repetition",
    "pixel_anchor_similarity",
    "subject_consistency",
    "subject_anchor_similarity",
    "background_consistency",
    "background_anchor_similarity",
    "aesthetic_quality",
)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}code{font-size:12px}"""


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else html.escape(str(x))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_num(c)}</td>'
            if isinstance(c, (int, float)) or c is None
            else f"<td>{html.escape(str(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _segments(a) -> str:
    """Segments, and the trailing partial one the drift summaries leave out (evaluate.drift_for)."""
    partial = a.n_segments and a.segment_end_s[-1] - a.segment_start_s[-1] < a.config.segment_seconds * (1 - 1e-9)
    if not partial:
        return str(a.n_segments)
    return f"{a.n_segments - 1} + a partial {a.segment_end_s[-1] - a.segment_start_s[-1]:.3g} s (not in drift)"


def render_html(ev: Evaluation, plots: dict[str, Path]) -> str:
    names = list(dict.fromkeys(n for v in ev.videos for n in v.analysis.whole))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>memrope evaluation</title>"
        f"<style>{_CSS}</style></head><body><h1>memrope evaluation</h1>"
    ]
    parts.append(
        "<h2>Videos</h2>"
        + _table(
            [
                "label",
                "method",
                "prompt",
                "size",
                "fps",
                "seconds",
                "segments",
                "seam period",
                "seam contrast",
                "eval s / video min",
            ],
            [
                [
                    v.analysis.label,
                    v.method,
                    v.prompt,
                    f"{v.analysis.info.width}x{v.analysis.info.height}",
                    v.analysis.info.fps,
                    v.analysis.seconds_evaluated,
                    _segments(v.analysis),
                    v.analysis.seam.period if v.analysis.seam.detected else "none",
                    v.analysis.seam.contrast,
                    v.analysis.elapsed_s / (v.analysis.seconds_evaluated / 60.0),
                ]
                for v in ev.videos
            ],
        )
    )
    parts.append(
        "<h2>Whole-video metrics</h2>"
        + _table(
            ["metric", *[v.analysis.label for v in ev.videos]],
            [[n, *[v.analysis.whole.get(n) for v in ev.videos]] for n in names],
        )
    )
    drift_rows = []
    for v in ev.videos:
        for n in DRIFT_TABLE_METRICS:
            d = v.drift.get(n)
            if d is not None and d.n_segments:
                drift_rows.append(
                    [
                        v.analysis.label,
                        n,
                        d.first,
                        d.last,
                        d.change,
                        d.slope_per_minute,
                        d.largest_drop,
                        d.largest_drop_time_s,
                        d.threshold,
                        d.time_to_threshold_s,
                    ]
                )
    parts.append(
        "<h2>Drift over time</h2>"
        + _table(
            [
                "video",
                "metric",
                "first",
                "last",
                "change",
                "slope / min",
                "largest drop",
                "at s",
                "threshold",
                "time to threshold s",
            ],
            drift_rows,
        )
    )
    long_rows = [
        [v.analysis.label, n, d.first_5s, d.last_5s, d.quality_drift, d.vde_name, d.vde_linear, d.vde_log, d.basis]
        for v in ev.videos
        for n in DRIFT_TABLE_METRICS
        if (d := v.long_drift.get(n)) is not None and (math.isfinite(d.first_5s) or math.isfinite(d.vde_linear))
    ]
    if long_rows:
        parts.append(
            "<h2>Long-video drift as the papers report it</h2><p>Quality drift = first 5 s - last 5 s; "
            "VDE = LV-Bench's Video Drift Error over 10 equal chunks (linear and log weights).</p>"
            + _table(["video", "metric", "first 5 s", "last 5 s", "quality drift", "VDE name", "VDE linear",
                      "VDE log", "basis"], long_rows)
        )
    parts.append(
        "<h2>Per method (bootstrap 95% CI over (prompt, seed) pairs)</h2>"
        + _table(
            ["metric", *ev.summary.keys()],
            [
                [
                    n,
                    *[
                        (f"{_num(e[n].mean)} (n = 1, no interval)" if e[n].n == 1 else
                         f"{_num(e[n].mean)} [{_num(e[n].low)}, {_num(e[n].high)}] n={e[n].n}")
                        if n in e
                        else "-"
                        for e in ev.summary.values()
                    ],
                ]
                for n in names
            ],
        )
    )
    comp_rows = [
        [
            n,
            c.label_a,
            c.label_b,
            c.difference.mean,
            c.difference.low if c.difference.n > 1 else None,
            c.difference.high if c.difference.n > 1 else None,
            c.difference.n,
            c.p_value,
        ]
        for n, cs in ev.comparisons.items()
        for c in cs
    ]
    if comp_rows:
        parts.append(
            "<h2>Paired comparisons (a - b over the (prompt, seed) pairs both have)</h2><p>CI: paired bootstrap "
            "(none from one pair); p: exact sign-flip permutation test, which cannot fall below 2^(1 - pairs).</p>"
            + _table(["metric", "a", "b", "mean diff", "CI low", "CI high", "pairs", "p"], comp_rows)
        )
    for title, path in plots.items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_image(path)}")
    parts.append(
        "<h2>Metric definitions</h2>"
        + _table(
            ["metric", "better", "unit", "implementation", "what / why"],
            [
                [
                    s.name,
                    {True: "higher", False: "lower", None: "-"}[s.higher_is_better],
                    s.unit,
                    s.implementation,
                    s.description,
                ]
                for s in ev.specs.values()
            ],
        )
    )
    if ev.skipped:
        parts.append(
            "<h2>Skipped (weights not found; never downloaded)</h2>"
            + _table(["metric", "reason"], [[k, v] for k, v in ev.skipped.items()])
        )
    parts.append(
        "<h2>Versions and config</h2>"
        + _table(
            ["item", "value"],
            [[k, v or "-"] for k, v in package_versions().items()]
            + [[f"config.{k}", v] for k, v in ev.config.to_dict().items()],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, segments.csv, whole.csv, plots/*.png and report.html into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics.json": write_json(evaluation, out / "metrics.json")}
    for p in write_csvs(evaluation, out):
        paths[p.name] = p
    plots = write_plots(evaluation, out)
    report = out / "report.html"
    report.write_text(render_html(evaluation, plots), encoding="utf-8")
    paths["report.html"] = report
    paths.update({f"plots/{p.name}": p for p in plots.values()})
    return paths
