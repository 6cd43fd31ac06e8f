"""The contract between a hospital's agent and the consortium coordinator.

Message and record schemas, task names, versioning, canonical serialization for anything that is
signed, and the ledger entry format. This package is deliberately light: no torch, no pydicom, so
an auditor's machine and the coordinator can import it without any code that touches images.
"""

SCHEMA_VERSION = 1
