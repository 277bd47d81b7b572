"""The two stores: events (ClickHouse) and metadata (SQLAlchemy)."""
