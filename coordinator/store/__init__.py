"""The synthetic-output store: content-addressed files plus an SQLite index, exportable as a dataset."""

from coordinator.store.outputs import StoredOutput, SyntheticStore

__all__ = ["StoredOutput", "SyntheticStore"]
