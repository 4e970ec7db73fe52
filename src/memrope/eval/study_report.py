"""The report of a study (``memrope compare``): the papers' layout, statistics sized to n, the videos shown.

For each base model and horizon, one table of means (rows = methods; columns = the dimensions, then
the drift metrics: last whole segment - first) and one of paired differences against the reference
method, both in column groups narrow enough for a 1400 px screen. Units are (prompt, seed) pairs;
intervals and tests are those of :mod:`memrope.eval.paired_tests` (no interval at n = 1, exact
permutation p with the smallest p the n allows printed beside it, Holm over every test of the
table). Below: a thumbnail grid per shown (prompt, seed), methods x log-spaced late times, each
image a link to its video, and a list of every video.

Reads only the per-video records a study wrote (plain dicts), never the generator.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from memrope.eval.paired_tests import holm, mean_interval, min_attainable_p, paired_test
from memrope.eval.report import DRIFT_TABLE_METRICS

COLUMNS_PER_TABLE = 6  # metric columns per table: with the method column, fits 1400 px at 13 px type
DIMENSIONS = ("quality_score", *DRIFT_TABLE_METRICS)
DRIFT_COLUMNS = ("imaging_quality", "subject_consistency", "background_consistency", "aesthetic_quality",
                 "sharpness", "histogram_drift", "pixel_anchor_similarity", "temporal_flickering")
PAGE_WIDTH_PX = 1400

_CSS = f"""body{{font-family:system-ui,sans-serif;margin:1em;max-width:{PAGE_WIDTH_PX - 40}px;font-size:14px}}
table{{border-collapse:collapse;margin:0.6em 0;font-size:13px;table-layout:fixed}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top;overflow-wrap:anywhere}}
th{{background:#f0f0f0;width:170px}}td.num{{text-align:right;font-variant-numeric:tabular-nums;width:170px}}
td.method{{font-weight:600;width:130px}}small{{color:#555}}.grid img{{display:block;image-rendering:pixelated;
min-width:64px;min-height:64px;max-width:150px}}.grid td{{width:auto}}.note{{color:#444;max-width:1300px}}"""


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _p(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.2g}" if x >= 0.001 else f"{x:.1e}"


def _value(record: dict, column: str) -> float:
    if column.startswith("drift:"):
        d = record["drift"].get(column[6:])
        v = None if d is None else d.get("change")
    else:
        v = record["whole"].get(column)
    return math.nan if v is None else float(v)


def columns_for(records: list[dict]) -> list[str]:
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    whole = {n for r in records for n, v in r["whole"].items() if finite(v)}
    drift = {n for r in records for n, d in r["drift"].items() if finite(d.get("change"))}
    return [n for n in DIMENSIONS if n in whole] + [f"drift:{n}" for n in DRIFT_COLUMNS if n in drift]


def _header(column: str) -> str:
    name = column[6:] if column.startswith("drift:") else column
    text = html.escape(name.replace("_", " "))
    return f"&Delta; {text}<br><small>last - first segment</small>" if column.startswith("drift:") else text


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join("<tr>" + "".join(rows_i) + "</tr>" for rows_i in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{body}</table>'


def _groups(columns: list[str]) -> list[list[str]]:
    return [columns[i:i + COLUMNS_PER_TABLE] for i in range(0, len(columns), COLUMNS_PER_TABLE)] or [[]]


def _interval_text(iv) -> str:
    if iv.n == 0:
        return "-"
    if iv.kind == "none":
        return f"{_fmt(iv.mean)}<br><small>n = {iv.n}</small>"
    kind = "t" if iv.kind == "t" else "boot"
    return f"{_fmt(iv.mean)}<br><small>[{_fmt(iv.low, 3)}, {_fmt(iv.high, 3)}] {kind}, n = {iv.n}</small>"


def horizon_tables(records: list[dict], policies: list[str], reference: str) -> dict[str, Any]:
    """Means and paired tests of one (base, horizon): {"columns", "means", "tests"} (tests Holm-adjusted)."""
    columns = columns_for(records)
    by = {(r["policy"], r["unit"]): r for r in records}
    units = sorted({r["unit"] for r in records})
    means = {p: {c: mean_interval([_value(by[p, u], c) for u in units if (p, u) in by]) for c in columns}
             for p in policies}
    tests: dict[str, dict[str, Any]] = {}
    for p in policies:
        if p == reference:
            continue
        shared = [u for u in units if (p, u) in by and (reference, u) in by]
        tests[p] = {c: paired_test([_value(by[p, u], c) for u in shared], [_value(by[reference, u], c)
                                                                         for u in shared]) for c in columns}
    flat = [(p, c) for p in tests for c in columns]
    adjusted = holm([tests[p][c].p_value for p, c in flat])
    from dataclasses import replace

    for (p, c), q in zip(flat, adjusted):
        tests[p][c] = replace(tests[p][c], p_holm=q)
    return {"columns": columns, "means": means, "tests": tests, "units": units}


def _horizon_html(base: str, label: str, records: list[dict], meta: dict) -> tuple[str, dict]:
    policies, reference = meta["policies"], meta["reference"]
    t = horizon_tables(records, policies, reference)
    parts = [f"<h3>{html.escape(base)}, {html.escape(label)}</h3>"]
    k = sorted({r["whole_segments"] for r in records})
    dropped = max(r["dropped_seconds"] for r in records)
    frames = max(r["dropped_frames"] for r in records)
    seg = meta["segment_seconds"]
    if k == [0]:
        note = f"every video is shorter than one {seg:g} s segment: evaluated whole, no drift values"
    else:
        note = f"{', '.join(map(str, k))} whole segments of {seg:g} s evaluated"
        note += (f"; the trailing partial segment ({dropped:.3g} s, {frames} frames) was dropped" if frames
                 else "; no partial segment")
    n = len(t["units"])
    parts.append(f'<p class="note">{note}. Units: {n} (prompt, seed) pairs; intervals: 95% Student-t for '
                 f'2 &le; n &lt; 10, percentile bootstrap from 10, none at n = 1.</p>')
    for group in _groups(t["columns"]):
        rows = [[f'<td class="method">{html.escape(p)}</td>', *(f'<td class="num">{_interval_text(t["means"][p][c])}'
                                                                 f'</td>' for c in group)] for p in policies]
        parts.append(_table(["method", *map(_header, group)], rows, "means"))
    if t["tests"]:
        m = sum(len(v) for v in t["tests"].values())
        parts.append(f'<p class="note">Paired differences (method - {html.escape(reference)}) over the units both '
                     f'have; p: exact sign-flip permutation test (two-sided); with n = {n} units no p can be below '
                     f'{_p(min_attainable_p(n))}; Holm over the {m} tests of this table.</p>')
        for group in _groups(t["columns"]):
            rows = []
            for p, tests in t["tests"].items():
                cells = []
                for c in group:
                    pt = tests[c]
                    if pt.difference.n == 0:
                        cells.append('<td class="num">-</td>')
                        continue
                    cells.append(f'<td class="num">{_fmt(pt.difference.mean, 3)}<br><small>p = {_p(pt.p_value)} '
                                 f'(min {_p(pt.min_p)}), Holm {_p(pt.p_holm)}</small></td>')
                rows.append([f'<td class="method">{html.escape(p)}</td>', *cells])
            parts.append(_table([f"vs {html.escape(reference)}", *map(_header, group)], rows, "tests"))
    summary = {"columns": t["columns"], "units": t["units"],
               "means": {p: {c: iv.to_dict() for c, iv in v.items()} for p, v in t["means"].items()},
               "tests": {p: {c: pt.to_dict() for c, pt in v.items()} for p, v in t["tests"].items()}}
    return "\n".join(parts), summary


def _grid_html(base: str, records: list[dict], meta: dict) -> str:
    longest = max(r["horizon"] for r in records)
    shown = [r for r in records if r["horizon"] == longest and r["thumbnails"]]
    units = sorted({r["unit"] for r in shown})[: meta["grid_videos"]]
    parts = []
    for unit in units:
        row_records = {r["policy"]: r for r in shown if r["unit"] == unit}
        times = sorted({round(t, 3) for r in row_records.values() for t, _ in r["thumbnails"]})
        head = ["method", *(f"{t:g} s" for t in times)]
        rows = []
        for p in meta["policies"]:
            r = row_records.get(p)
            if r is None:
                continue
            at = {round(t, 3): src for t, src in r["thumbnails"]}
            cells = [f'<td class="method"><a href="{html.escape(r["video"])}">{html.escape(p)}</a></td>']
            cells += [f'<td><a href="{html.escape(r["video"])}"><img src="{html.escape(at[t])}" '
                      f'alt="{html.escape(p)} at {t:g} s"></a></td>' if t in at else "<td></td>" for t in times]
            rows.append(cells)
        text = html.escape(next(iter(row_records.values()))["prompt_text"][:200])
        parts.append(f"<h3>{html.escape(base)}: {html.escape(unit)}</h3><p class='note'>{text}</p>"
                     + _table(head, rows, "grid"))
    return "\n".join(parts)


def render(meta: dict, records: list[dict]) -> tuple[str, dict]:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>memrope compare: "
             f"{html.escape(meta['name'])}</title><style>{_CSS}</style></head><body>"
             f"<h1>{html.escape(meta['name'])}</h1>"
             f"<p class='note'>Methods: {html.escape(', '.join(meta['policies']))} (reference "
             f"{html.escape(meta['reference'])}); bases: {html.escape(', '.join(meta['bases']))}; seam period "
             f"{meta['seam_period']} frames, from the chunk ({html.escape(meta['chunk'])}), not searched for.</p>"]
    summary: dict[str, dict] = {}
    parts.append("<h2>Tables</h2>")
    for base in meta["bases"]:
        for seconds, label in meta["horizons"]:
            chosen = [r for r in records if r["base"] == base and r["horizon"] == seconds]
            if chosen:
                text, summary[f"{base}@{seconds:g}s"] = _horizon_html(base, label, chosen, meta)
                parts.append(text)
    parts.append('<h2 id="grid">Frames over time (same prompt and seed along a row)</h2>')
    for base in meta["bases"]:
        parts.append(_grid_html(base, [r for r in records if r["base"] == base], meta))
    longest = max(s for s, _ in meta["horizons"])
    rows = [[f"<td>{html.escape(r['base'])}</td>", f"<td>{html.escape(r['policy'])}</td>",
             f"<td>{html.escape(r['unit'])}</td>", f'<td class="num">{_fmt(r["video_seconds"])}</td>',
             f'<td><a href="{html.escape(r["video"])}">{html.escape(r["video"].rsplit("/", 1)[-1])}</a></td>']
            for r in records if r["horizon"] == longest]
    parts.append("<h2>Videos</h2>" + _table(["base", "method", "unit", "seconds", "file"], rows, "videos"))
    specs = {n: s for r in records for n, s in r["specs"].items()}
    shown = {c[6:] if c.startswith("drift:") else c for v in summary.values() for c in v["columns"]}
    rows = [[f"<td>{html.escape(n)}</td>",
             f"<td>{ {True: 'higher', False: 'lower', None: '-'}[specs[n]['higher_is_better']] }</td>",
             f"<td>{html.escape(specs[n]['description'])}</td>"] for n in sorted(shown) if n in specs]
    parts.append("<h2>Metrics</h2>" + _table(["metric", "better", "what"], rows, "defs"))
    skipped = {k: v for r in records for k, v in r["skipped"].items()}
    if skipped:
        parts.append("<h2>Skipped</h2>" + _table(["metric", "reason"], [[f"<td>{html.escape(k)}</td>",
                                                                          f"<td>{html.escape(v)}</td>"]
                                                                         for k, v in skipped.items()]))
    parts.append("</body></html>")
    return "\n".join(parts), summary


def _clean(x):
    """NaN -> null: tables.json is strict JSON, and two equal tables compare equal."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_study_report(out_dir: Path, meta: dict, records: list[dict]) -> Path:
    """report.html and tables.json (every mean, interval and test the tables show) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text, summary = render(meta, records)
    (out_dir / "tables.json").write_text(json.dumps(_clean({"meta": meta, "tables": summary}), indent=1,
                                                    default=str, allow_nan=False))
    path = out_dir / "report.html"
    path.write_text(text, encoding="utf-8")
    return path
