"""Detectors: summaries pushed down to ClickHouse, statistics in NumPy, results in one table."""
