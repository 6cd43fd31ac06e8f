"""Ledger verification speed: entries per second for a 100,000-entry ledger (target >= 10,000/s).

Builds a synthetic ledger (10 sites with their own sampling rates, so every DP-SGD entry has a
distinct history to recompute; a k-anonymity release every 10th round; epsilon from dp-accounting
RDP), then runs the full audit: chain, both Ed25519 signatures per
entry, site claim chains, epsilon recomputation, signed head. Prints wall-clock entries/s and
entries per CPU-second (main process plus signature workers), the latter being the figure that
does not depend on what else the machine is running.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ledger_verify_bench.py [--entries 100000] [--workers 1 2]
        [--keep DIR]   # build once into DIR and reuse it on later runs
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.audit.verify import audit  # noqa: E402
from coordinator.ledger.synthetic import synthetic_claims, write_synthetic_ledger  # noqa: E402
from protocols.signing import SigningKey, load_key_directory, save_public_key  # noqa: E402


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped signature workers
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _build(folder: Path, entries: int, n_sites: int) -> None:
    sites = {f"hospital-{i:02d}": SigningKey.generate() for i in range(n_sites)}
    coordinator = SigningKey.generate()
    rounds = max(1, round(entries / (n_sites * 1.1)))  # one DP-SGD claim per site per round, k-anonymity every 10th
    t0 = time.perf_counter()
    rates = {name: 0.02 + 0.003 * i for i, name in enumerate(sites)}  # sites differ in size: own DP history each
    claims = synthetic_claims(sites, rounds=rounds, ksalsa_every=10, sample_rates=rates)
    write_synthetic_ledger(folder / "ledger.jsonl", claims, coordinator, {k: v.public for k, v in sites.items()}, fast=True)
    for name, key in (sites | {"coordinator": coordinator}).items():
        save_public_key(key.public, folder / "keys" / f"{name}.pub")
    size_mb = (folder / "ledger.jsonl").stat().st_size / 1e6
    print(f"built {len(claims)} entries ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="approximate ledger size (default 100000)")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="signature worker processes to try")
    parser.add_argument("--keep", type=Path, help="folder to build the ledger in once and reuse")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "ledger.jsonl").is_file():
            _build(folder, args.entries, args.sites)
        keys = load_key_directory(folder / "keys")
        # Warm up on the first entries (imports dp-accounting and scipy, computes the per-step RDP
        # vector): one-time costs that are not per-entry throughput.
        with open(folder / "ledger.jsonl", "rb") as fh:
            (Path(tmp) / "warmup.jsonl").write_bytes(b"".join(fh.readline() for _ in range(50)))
        audit(Path(tmp) / "warmup.jsonl", keys)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes slow wall-clock figures)")
        for workers in args.workers:
            c0, t0 = _cpu_seconds(), time.perf_counter()
            result = audit(folder / "ledger.jsonl", keys, workers=workers)
            dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            assert result.ok, result.summary_lines()[-1]
            print(f"verify workers={workers}: {result.entries} entries in {dt:.1f} s wall = {result.entries / dt:,.0f} "
                  f"entries/s; {cpu:.1f} CPU-s = {result.entries / cpu:,.0f} entries per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
