"""memrope.eval: long-video evaluation (drift over time, VBench-style metrics, comparison reports).

Public entry points (imported lazily, so `import memrope.eval` loads neither transformers nor
matplotlib until they are needed):
- evaluate_videos(paths, out_dir, weights_dir=None, labels=None, prompts=None, config=None, ...)
- write_report(evaluation, out_dir)
- analyze_video(path, config=None, label=None, features=(), progress=False)
- EvalConfig, drift_summary, bootstrap_mean_ci, paired_bootstrap, add_eval_parser
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "memrope.eval.config",
    "analyze_video": "memrope.eval.analysis",
    "VideoAnalysis": "memrope.eval.analysis",
    "evaluate_videos": "memrope.eval.evaluate",
    "Evaluation": "memrope.eval.evaluation",
    "write_report": "memrope.eval.report",
    "drift_summary": "memrope.eval.drift",
    "DriftSummary": "memrope.eval.drift",
    "bootstrap_mean_ci": "memrope.eval.bootstrap",
    "paired_bootstrap": "memrope.eval.bootstrap",
    "add_eval_parser": "memrope.eval.cli",
    "NetworkSuite": "memrope.eval.vbench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'memrope.eval' has no attribute {name!r}")
