"""driftline: drift and model-quality monitoring on ClickHouse."""

__version__ = "0.1.0"
