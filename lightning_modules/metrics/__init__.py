"""The module's metrics: what each stage logs, accumulated on the device without host waits."""

from lightning_modules.metrics.stage_scores import StageScores, confusion_counts, scores_from_confusion

__all__ = ["StageScores", "confusion_counts", "scores_from_confusion"]
