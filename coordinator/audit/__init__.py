"""Auditor tools: verify a privacy ledger with only the ledger and public keys; render a report.

What an auditor receives and runs::

    ledger.jsonl          the ledger (one canonical JSON entry per line)
    ledger.jsonl.head     the coordinator's signed head (entry count + last hash: detects truncation)
    keys/coordinator.pub  public keys, from `anonfed keys export` (sites: keys/<site-id>.pub)

    anonfed audit verify ledger.jsonl --keys keys/ [--store synthetic-store/]
    anonfed audit report ledger.jsonl -o report.html --keys keys/ [--budget 8]

- :func:`coordinator.audit.verify.audit` lists every finding and never raises for bad evidence;
  :func:`coordinator.audit.verify.verify` raises the first error (ChainError, SignatureError,
  AccountingError, KAnonymityError, IntegrityError) naming the entry and site.
- :mod:`coordinator.audit.recompute` recomputes DP-SGD epsilon with Google's dp-accounting (the
  sites write with Opacus) and states the tolerance rule.
- :mod:`coordinator.audit.report` writes a self-contained HTML report.
- Sites check the ledger against their own signed claims with ``anonfed ledger show --config
  site.yaml --ledger ledger.jsonl`` (omitted or altered claims).
"""
