"""Coordinator overhead per round (checks, aggregation, storage, ledger) as a fraction of round time.

Two measurements:

* **3 sites, real deployment**: the timings the ServerApp recorded in a loopback run with a real
  SuperLink and SuperNodes (``anonfed demo``): ``summary.json`` of that run (``--deployment-summary``,
  default ``demo-run/coordinator/output/summary.json``; the demo is run first if it is missing).
* **N sites on Flower's simulation engine** (optional, ``--simulation-summary``): the timings of an
  ``anonfed simulate --sites N`` run (real ServerApp and ClientApps, virtual SuperNodes, real
  DP-GAN rounds on phantom sites).
* **50 simulated sites, in process**: the same round loop, store and ledger (real Ed25519 claims,
  real FedAvg over full-size generator+critic weights, real sha256 checks, real ledger appends with
  epsilon recomputation) fed by simulated sites that answer instantly with precomputed replies. The
  coordinator's own time is measured; the round time adds the sites' compute time measured in the
  real deployment (sites train in parallel, so a round waits for the slowest one).

Usage: ``python benchmarks/coordinator_overhead.py [--sites 3 50] [--rounds 3] [--deployment-summary P]``
Prints a table and writes ``benchmarks/results/coordinator_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.models import initial_weights  # noqa: E402  (the one agent package the coordinator uses)
from coordinator.budget import ConsortiumBudget  # noqa: E402
from coordinator.rounds import FederationPlan, run_federation  # noqa: E402
from coordinator.rounds.session import check_claim_matches_reply  # noqa: E402
from coordinator.store import SyntheticStore  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.tasks import PrivacyUnit, Task  # noqa: E402


class SimulatedSites:
    """N sites answering like the real handlers (same messages, sizes, hashes and signed claims)."""

    def __init__(self, n: int, plan: FederationPlan, init: dict[str, np.ndarray]) -> None:
        from coordinator.audit.recompute import EpsilonRecomputer
        from protocols.ledger import GENESIS
        from protocols.signing import SigningKey

        self.plan = plan
        self.init = init
        self.keys = {f"site-{i:03d}": SigningKey.generate() for i in range(n)}
        self.nodes = {1000 + i: site for i, site in enumerate(self.keys)}
        self.rec = EpsilonRecomputer()
        self.state = {s: (EpsilonRecomputer.EMPTY, 0.0, GENESIS, 0) for s in self.keys}
        self.rng = np.random.default_rng(0)

    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def exchange(self, requests, *, round_, timeout_s):
        return {node: self._answer(self.nodes[node], env) for node, env in requests.items()}

    def _answer(self, site: str, env: m.Envelope) -> m.Envelope:
        msg = env.message
        if isinstance(msg, m.StatusQuery):
            return m.Envelope(m.StatusReply(site_id=site, accepted_tasks=("dpgan", "synthesize"), max_epsilon=10.0,
                                            delta=1e-5, unit=PrivacyUnit.PATIENT, min_patients=3, min_k=5, ksalsa_groups="nearest", epsilon_spent=0.0,
                                            num_patients=6, agent_version="bench"))
        if isinstance(msg, m.TrainInstruction):
            weights = {k: (v + self.rng.normal(0, 1e-3, v.shape)).astype(np.float32) for k, v in env.arrays.items()}
            digest = m.weights_sha256(weights)
            q, sigma, steps = 0.5, 1.2, msg.local_steps
            history, cum, prev, seq = self.state[site]
            history = self.rec.extend(history, sample_rate=q, noise_multiplier=sigma, steps=steps)
            new_cum = self.rec.rdp_epsilon(history, 1e-5)
            claim = self._claim(site, msg.round, digest, len(m.canonical_weights_bytes(weights)), new_cum, cum,
                                (q, sigma, steps), prev, seq)
            self.state[site] = (history, new_cum, claim.claim.claim_hash, seq + 1)
            reply = m.TrainReply(run_id=msg.run_id, round=msg.round, site_id=site, task=Task.DPGAN, num_patients=6,
                                 weights_sha256=digest, epsilon_round=new_cum - cum, epsilon_cumulative=new_cum,
                                 epsilon_next=None, delta=1e-5, unit=PrivacyUnit.PATIENT, noise_multiplier=sigma,
                                 sample_rate=q, steps=steps, max_grad_norm=1.0, accountant="bench-rdp",
                                 claim=claim.to_bytes())
            return m.Envelope(reply, weights, {"generator_loss": 0.1})
        assert isinstance(msg, m.SynthesizeQuery)
        s = msg.patch_size
        samples = self.rng.uniform(-1, 1, (msg.count, 2, s, s)).astype(np.float32)
        samples[:, 1] = samples[:, 1] > 0
        digest = m.array_sha256(samples)
        history, cum, prev, seq = self.state[site]
        claim = self._claim(site, msg.round, digest, len(m.canonical_array_bytes(samples)), cum, cum, None, prev, seq)
        self.state[site] = (history, cum, claim.claim.claim_hash, seq + 1)
        reply = m.SynthesizeReply(run_id=msg.run_id, round=msg.round, site_id=site, count=msg.count,
                                  method="dpgan-wgan-gp", guarantee=f"({cum:.4g}, 1e-05)-DP, unit patient",
                                  model_round=msg.round - 1, epsilon_cumulative=cum, delta=1e-5,
                                  unit=PrivacyUnit.PATIENT, samples_sha256=digest, claim=claim.to_bytes())
        return m.Envelope(reply, {"samples": samples})

    def _claim(self, site, rnd, digest, size, cum, prev_cum, mech, prev, seq):
        from protocols.ledger import (Artifact, ArtifactKind, DpSgdMechanism, MechanismKind, PlainMechanism,
                                      make_claim, sign_claim)

        if mech is not None:
            q, sigma, steps = mech
            mechanism = DpSgdMechanism(sigma, q, steps, 1.0, 1e-5, PrivacyUnit.PATIENT, "bench-rdp")
            art, task, eps = Artifact(f"weights-r{rnd}", ArtifactKind.WEIGHTS, digest, size), Task.DPGAN, cum - prev_cum
        else:
            mechanism = PlainMechanism(MechanismKind.POST_PROCESSING)
            art, task, eps = Artifact(f"samples-r{rnd}", ArtifactKind.SYNTHETIC, digest, size), Task.SYNTHESIZE, 0.0
        claim = make_claim(run_id=self.plan.run_id, round=rnd, site=site, site_seq=seq, site_prev=prev,
                           key_id=self.keys[site].key_id, task=task, dataset="tof", mechanism=mechanism, epsilon=eps,
                           cumulative_epsilon=cum, artifacts=(art,))
        return sign_claim(claim, self.keys[site])


def measure_simulated(n: int, rounds: int, patch_size: int) -> dict:
    """Coordinator time per round with ``n`` simulated sites (real store + ledger + FedAvg)."""
    from coordinator.ledger import Ledger
    from protocols.ledger import SignedClaim
    from protocols.signing import SigningKey

    plan = FederationPlan(rounds=rounds, patch_size=patch_size, local_steps=2, synth_count=16, run_id="run-bench",
                          consortium_budget=1000.0)
    init = initial_weights(plan.architecture, plan.patch_size, 0)
    sites = SimulatedSites(n, plan, init)
    with tempfile.TemporaryDirectory() as tmp, SyntheticStore(Path(tmp) / "store") as store, \
            Ledger.open(Path(tmp) / "ledger.jsonl", SigningKey.generate()) as ledger:

        def on_claim(site: str, reply: m.WireMessage) -> None:
            signed = SignedClaim.from_bytes(reply.claim)  # type: ignore[attr-defined]
            check_claim_matches_reply(signed.claim, site, reply)
            ledger.append_site_claim(signed, sites.keys[site].public)

        t0 = time.perf_counter()
        result = run_federation(sites, plan, budget=ConsortiumBudget(plan.consortium_budget), store=store,
                                initial_weights=init, on_claim=on_claim, progress=lambda s: None)
        total = time.perf_counter() - t0
    train = [t for t in result.timings if t.round <= rounds]
    synth = [t for t in result.timings if t.round > rounds]
    return {
        "sites": n,
        "rounds": rounds,
        "weights_mb_per_site": sum(v.nbytes for v in init.values()) / 1e6,
        "overhead_s_per_round": statistics.mean(t.overhead_s for t in train),
        "checks_s": statistics.mean(t.checks_s for t in train),
        "aggregation_s": statistics.mean(t.aggregation_s for t in train),
        "storage_s": statistics.mean(t.storage_s for t in train),
        "collection_overhead_s": synth[0].overhead_s if synth else 0.0,
        "total_s": total,
    }


def load_deployment(path: Path) -> dict:
    summary = json.loads(path.read_text(encoding="utf-8"))
    timings = [t for t in summary["timings"] if t["sites_trained"] > 0]
    return {
        "sites": len(summary["sites"]),
        "rounds": len(timings),
        "round_wall_s": statistics.mean(t["wall_s"] for t in timings),
        "site_wait_s": statistics.mean(t["wait_s"] for t in timings),
        "overhead_s_per_round": statistics.mean(t["overhead_s"] for t in timings),
        "overhead_fraction": statistics.mean(t["overhead_fraction"] for t in timings),
        "source": str(path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--deployment-summary", type=Path, default=ROOT / "demo-run" / "coordinator" / "output" / "summary.json")
    parser.add_argument("--simulation-summary", type=Path, default=None,
                        help="summary.json of an `anonfed simulate --sites N` run (Flower simulation engine)")
    args = parser.parse_args()
    if not args.deployment_summary.is_file():
        print(f"no deployment summary at {args.deployment_summary}: running `anonfed demo --rounds 2` first", flush=True)
        out = ROOT / "benchmarks" / "results" / "overhead-demo"
        subprocess.run([str(Path(sys.executable).with_name("anonfed")), "demo", "--out", str(out), "--rounds", "2"],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        args.deployment_summary = out / "coordinator" / "output" / "summary.json"
    real = load_deployment(args.deployment_summary)
    print(f"real loopback deployment, {real['sites']} sites, {real['rounds']} round(s) ({real['source']}):")
    print(f"  round {real['round_wall_s']:.1f} s, waiting for sites {real['site_wait_s']:.1f} s, coordinator "
          f"{real['overhead_s_per_round'] * 1000:.1f} ms = {100 * real['overhead_fraction']:.3f} % of the round")
    flower_sim = None
    if args.simulation_summary is not None:
        flower_sim = load_deployment(args.simulation_summary)
        print(f"Flower simulation engine, {flower_sim['sites']} virtual sites, {flower_sim['rounds']} round(s):")
        print(f"  round {flower_sim['round_wall_s']:.1f} s, waiting for sites {flower_sim['site_wait_s']:.1f} s, "
              f"coordinator {flower_sim['overhead_s_per_round'] * 1000:.1f} ms = "
              f"{100 * flower_sim['overhead_fraction']:.3f} % of the round")
    rows = []
    for n in args.sites:
        sim = measure_simulated(n, args.rounds, args.patch_size)
        round_s = real["site_wait_s"] + sim["overhead_s_per_round"]
        sim["round_s_with_real_site_time"] = round_s
        sim["overhead_fraction"] = sim["overhead_s_per_round"] / round_s
        rows.append(sim)
    print(f"\nsimulated sites (in process; round time = measured coordinator time + real site time "
          f"{real['site_wait_s']:.1f} s):")
    print(f"{'sites':>6} {'checks ms':>10} {'fedavg ms':>10} {'storage ms':>11} {'overhead ms':>12} {'fraction':>9}")
    for r in rows:
        print(f"{r['sites']:>6} {r['checks_s'] * 1e3:>10.1f} {r['aggregation_s'] * 1e3:>10.1f} {r['storage_s'] * 1e3:>11.1f} "
              f"{r['overhead_s_per_round'] * 1e3:>12.1f} {100 * r['overhead_fraction']:>8.2f}%")
    out = ROOT / "benchmarks" / "results" / "coordinator_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"deployment": real, "flower_simulation": flower_sim, "simulated": rows,
                               "command": "python benchmarks/coordinator_overhead.py " + " ".join(sys.argv[1:])},
                              indent=2), encoding="utf-8")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
