"""Reporting: what results look like to a reader. Tables and percentages (tables.py), matplotlib
figures (figures.py) and the confusion matrix they are drawn from (confusion.py); shared by the
callbacks, compare.py, sweep.py and the benchmarks. Nothing here is a callback or trains."""

from lightning_modules.reporting.tables import markdown_table, mean_sd, pct, text_table

__all__ = ["markdown_table", "mean_sd", "pct", "text_table"]
