"""What a metric is: its name, how it is implemented, its unit and which direction is better.

The implementation tag travels into `metrics.json` so two reports are only compared when they were
computed the same way (a VBench-exact score and a weight-free proxy never share a column silently).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MetricSpec:
    """Identity card of one metric.

    name: column name in CSV/JSON. implementation: short tag naming the formula and its source.
    higher_is_better: direction used by drift summaries and plots (None: neither, e.g. a statistic).
    unit: what one unit means. description: one sentence on what it measures and why it matters.
    """

    name: str
    implementation: str
    unit: str
    description: str
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"metric name {self.name!r} must be an identifier (it becomes a CSV column)")
        if not self.implementation:
            raise ValueError(f"metric {self.name}: implementation tag must not be empty")

    def to_dict(self) -> dict:
        return asdict(self)
