"""Alembic revisions of the metadata store, one per schema change, applied by `migrate()`."""
