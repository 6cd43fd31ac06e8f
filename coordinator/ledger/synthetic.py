"""Synthetic but valid ledgers (tests, the verification benchmark, demos).

Sites here "train" nothing: each claim records a DP-SGD segment and the cumulative epsilon
computed with dp-accounting's RDP (the same analysis the auditor runs), labelled
``synthetic-rdp`` so no one mistakes these entries for a real training run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from protocols.ledger import (
    GENESIS, Artifact, ArtifactKind, DpSgdMechanism, KAnonRelease, PlainMechanism, MechanismKind, SignedClaim,
    countersign, make_claim, sign_claim,
)
from protocols.signing import SigningKey, VerifyKey
from protocols.tasks import PrivacyUnit, Task

from coordinator.audit.recompute import EpsilonRecomputer
from coordinator.ledger.head import head_path_for, sign_head, write_head
from coordinator.ledger.writer import Ledger

SYNTHETIC_ACCOUNTANT = "synthetic-rdp"


def synthetic_claims(
    site_keys: Mapping[str, SigningKey],
    *,
    rounds: int,
    dataset: str = "tof",
    sample_rate: float = 0.05,
    noise_multiplier: float = 1.1,
    steps: int = 30,
    delta: float = 1e-5,
    ksalsa_every: int = 0,
    run_id: str = "run-synthetic",
    sample_rates: Mapping[str, float] | None = None,
) -> list[SignedClaim]:
    """Signed claims for ``rounds`` rounds of every site, in round-major order.

    Every ``ksalsa_every``-th round (if > 0) each site also releases a k-anonymous set of
    clusters (k = 5) on dataset ``fundus``. ``sample_rates`` gives sites their own sampling rate
    (sites differ in size), so each site has its own DP history.
    """
    rec = EpsilonRecomputer()
    state = {site: (EpsilonRecomputer.EMPTY, 0.0, GENESIS, 0) for site in site_keys}
    out: list[SignedClaim] = []
    for rnd in range(rounds):
        start = hashlib.sha256(f"{run_id}/global/{rnd}".encode()).hexdigest()  # one global model per round
        for site, key in site_keys.items():
            history, cum, prev, seq = state[site]
            q = (sample_rates or {}).get(site, sample_rate)
            history = rec.extend(history, sample_rate=q, noise_multiplier=noise_multiplier, steps=steps)
            new_cum = rec.rdp_epsilon(history, delta)
            digest = hashlib.sha256(f"{site}/{rnd}".encode()).hexdigest()  # realistic hex, like a real artifact
            claim = make_claim(
                run_id=run_id, round=rnd, site=site, site_seq=seq, site_prev=prev, key_id=key.key_id,
                task=Task.DPGAN, dataset=dataset,
                mechanism=DpSgdMechanism(noise_multiplier, q, steps, 1.0, delta, PrivacyUnit.PATIENT,
                                         SYNTHETIC_ACCOUNTANT),
                epsilon=new_cum - cum, cumulative_epsilon=new_cum,
                artifacts=(Artifact("generator.safetensors", ArtifactKind.WEIGHTS, digest, 1000 + rnd),),
                start_weights_sha256=start,
            )
            signed = sign_claim(claim, key)
            out.append(signed)
            state[site] = (history, new_cum, claim.claim_hash, seq + 1)
            if ksalsa_every and rnd % ksalsa_every == ksalsa_every - 1:
                _, _, prev, seq = state[site]
                kclaim = make_claim(
                    run_id=run_id, round=rnd, site=site, site_seq=seq, site_prev=prev, key_id=key.key_id,
                    task=Task.KSALSA, dataset="fundus", mechanism=PlainMechanism(MechanismKind.K_ANONYMITY),
                    epsilon=0.0, cumulative_epsilon=0.0, kanon=KAnonRelease(5, 5, (5, 6, 7)),
                    artifacts=(Artifact("cluster-000.dcm", ArtifactKind.SYNTHETIC, digest[::-1], 2048),),
                )
                out.append(sign_claim(kclaim, key))
                state[site] = (history, new_cum, kclaim.claim_hash, seq + 1)
    return out


def write_synthetic_ledger(
    path: Path,
    claims: list[SignedClaim],
    coordinator_key: SigningKey,
    site_public: Mapping[str, VerifyKey],
    *,
    fast: bool = False,
) -> None:
    """Append ``claims`` to a new ledger at ``path``.

    ``fast`` skips the append checks and per-entry fsync (benchmarks with 100,000 entries); the
    result is byte-for-byte what :class:`Ledger` would have written, with a signed head.
    """
    path = Path(path)
    if not fast:
        with Ledger.open(path, coordinator_key) as ledger:
            for c in claims:
                ledger.append_site_claim(c, site_public[c.claim.site])
        return
    prev = GENESIS
    with open(path, "wb") as fh:
        for seq, c in enumerate(claims):
            entry = countersign(c, seq=seq, prev=prev, key=coordinator_key)
            fh.write(entry.line + b"\n")
            prev = entry.entry_hash
        fh.flush()
        os.fsync(fh.fileno())
    write_head(head_path_for(path), sign_head(count=len(claims), last_hash=prev, key=coordinator_key))

