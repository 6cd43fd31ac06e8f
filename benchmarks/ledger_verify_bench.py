"""Ledger verification speed: entries per second for a 100,000-entry ledger (target >= 10,000/s).

Builds a synthetic ledger (10 sites, DP-SGD claims with a k-anonymity release every 10th round,
epsilon from dp-accounting RDP), then runs the full audit: chain, both Ed25519 signatures per
entry, site claim chains, epsilon recomputation, signed head.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ledger_verify_bench.py [--entries 100000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.audit.verify import audit  # noqa: E402
from coordinator.ledger.synthetic import synthetic_claims, write_synthetic_ledger  # noqa: E402
from protocols.signing import SigningKey  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="approximate ledger size (default 100000)")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="signature worker processes to try")
    args = parser.parse_args(argv)

    sites = {f"hospital-{i:02d}": SigningKey.generate() for i in range(args.sites)}
    coordinator = SigningKey.generate()
    per_round = args.sites * 1.1  # one DP-SGD claim per site per round, a k-anonymity claim every 10th
    rounds = max(1, round(args.entries / per_round))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.jsonl"
        t0 = time.perf_counter()
        claims = synthetic_claims(sites, rounds=rounds, ksalsa_every=10)
        write_synthetic_ledger(path, claims, coordinator, {k: v.public for k, v in sites.items()}, fast=True)
        build = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(f"built {len(claims)} entries ({size_mb:.1f} MB) in {build:.1f} s")
        keys = {name: k.public for name, k in sites.items()} | {"coordinator": coordinator.public}
        for workers in args.workers:
            t0 = time.perf_counter()
            result = audit(path, keys, workers=workers)
            dt = time.perf_counter() - t0
            assert result.ok, result.summary_lines()[-1]
            print(f"verify workers={workers}: {result.entries} entries in {dt:.2f} s = {result.entries / dt:,.0f} entries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
