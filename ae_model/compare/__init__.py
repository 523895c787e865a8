"""Comparisons of arms over seeds: ``summary`` (paired statistics, verdicts in words, a table),
``stats`` (power, further intervals and a stopping rule for adding seeds) and ``plot`` (a PNG).

Imported by the API process, which never imports torch; scipy and matplotlib are imported only
when a summary is computed or a plot drawn. The names below are the package's interface.
"""

from ae_model.compare.plot import plot_comparison
from ae_model.compare.stats import SequentialDecision, sequential_decision
from ae_model.compare.summary import (
    METRICS,
    NO_RESULT,
    ArmResult,
    ArmStats,
    ComparisonSummary,
    MetricSummary,
    PairedDifference,
    format_table,
    summarize,
)

__all__ = [
    "METRICS",
    "NO_RESULT",
    "ArmResult",
    "ArmStats",
    "ComparisonSummary",
    "MetricSummary",
    "PairedDifference",
    "SequentialDecision",
    "format_table",
    "plot_comparison",
    "sequential_decision",
    "summarize",
]
