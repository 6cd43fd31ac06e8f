"""Auditor tools: verify a privacy ledger with only the ledger and public keys; render a report.

- :func:`coordinator.audit.verify.audit` lists every finding and never raises for bad evidence;
  :func:`coordinator.audit.verify.verify` raises the first error (ChainError, SignatureError,
  AccountingError, KAnonymityError) naming the entry and site.
- :mod:`coordinator.audit.recompute` recomputes DP-SGD epsilon with Google's dp-accounting (the
  sites write with Opacus) and states the tolerance rule.
- :mod:`coordinator.audit.report` writes a self-contained HTML report.

CLI: ``anonfed audit verify LEDGER --keys DIR [--store DIR]`` and ``anonfed audit report LEDGER -o report.html``.
"""
