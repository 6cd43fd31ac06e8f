"""One coordinator session: budget, store, ledger and summary files around :func:`run_federation`.

Used by the ServerApp (deployment and simulation) and by the benchmark; Flower-free.

Files under the output folder::

    progress.log        one line per event (the demo shows it live)
    budget.json         per-site consortium budget and reported spend
    store/              synthetic outputs (content-addressed) and their SQLite index
    ledger/ledger.jsonl the privacy ledger (if a keys folder with coordinator.key is given)
    global_weights.npz  final aggregated weights (DP-GAN generator + critic, or StyleGAN generator,
                        EMA generator + discriminator)
    summary.json        per-site epsilon, outputs, refusals, timings; when the plan names an
                        ``initial-weights`` file, its SHA-256 and the weights' canonical digest
                        (``weights_sha256``), which every round-1 claim in the ledger repeats as
                        ``start_weights_sha256``
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np

from coordinator.budget import ConsortiumBudget
from coordinator.rounds.loop import ClaimSink, FederationResult, run_federation, write_weights
from coordinator.rounds.plan import FederationPlan
from coordinator.rounds.transport import SiteTransport
from coordinator.store import SyntheticStore
from protocols import messages as m
from protocols.atomic_files import write_text_atomic
from protocols.errors import ConfigError, IntegrityError
from protocols.tasks import Task

if TYPE_CHECKING:
    from coordinator.ledger import Ledger
    from protocols.ledger import SignedClaim
    from protocols.signing import VerifyKey

log = logging.getLogger(__name__)

COORDINATOR_KEY = "coordinator.key"
PUBLIC_KEYS = "public"


@dataclasses.dataclass(frozen=True)
class SessionPaths:
    """Output folder and (optional) keys folder: ``coordinator.key`` + ``public/<name>.pub``."""

    out: Path
    keys: Path | None = None

    @property
    def progress(self) -> Path:
        return self.out / "progress.log"

    @property
    def store(self) -> Path:
        return self.out / "store"

    @property
    def ledger(self) -> Path:
        return self.out / "ledger" / "ledger.jsonl"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


def run_session(transport: SiteTransport, plan: FederationPlan, paths: SessionPaths) -> FederationResult:
    """Run ``plan`` and write everything listed in the module docstring."""
    from agent.models import initial_weights  # the one agent package the coordinator may use

    paths.out.mkdir(parents=True, exist_ok=True)
    say = _progress_writer(paths.progress)
    say(f"run {plan.run_id}: {plan.rounds} round(s) of {plan.task.value} {plan.architecture} at {plan.patch_size} px, "
        f"{plan.local_steps} local step(s), target epsilon {plan.target_epsilon:g}, consortium budget "
        f"{plan.consortium_budget:g} per site")
    budget = ConsortiumBudget(plan.consortium_budget, path=paths.out / "budget.json")
    start: dict[str, str] | None = None
    if plan.task is Task.DPGAN:
        init = initial_weights(plan.architecture, plan.patch_size, plan.seed)
        if plan.initial_weights:
            init, digest = load_initial_weights(Path(plan.initial_weights), reference=init)
            start = {"path": plan.initial_weights, "sha256": digest, "weights_sha256": m.weights_sha256(init)}
            say(f"round 1 starts from {plan.initial_weights} (file sha256 {digest}; weights_sha256 "
                f"{start['weights_sha256']}, as the sites' round-1 claims state it), not from seed {plan.seed}'s "
                "initialisation")
    else:  # StyleGAN code lives with the site's data code: the sites initialise from the round's seed
        say(f"{plan.task.value}: the sites initialise the model from the round seed; the first average is the "
            "global model")
        init = {}
    with SyntheticStore(paths.store) as store, _ledger_sink(paths, say) as on_claim:
        result = run_federation(transport, plan, budget=budget, store=store, initial_weights=init,
                                on_claim=on_claim, progress=say)
    write_weights(paths.out / "global_weights.npz", result.weights)
    summary = result.summary()
    summary["ledger"] = str(paths.ledger) if paths.ledger.is_file() else None
    summary["initial_weights"] = start
    summary["store"] = str(paths.store)
    _atomic_json(paths.summary, summary)
    say(f"done: {result.rounds_completed} round(s); {result.stop_reason}; {len(result.outputs)} output(s) stored")
    return result


def load_initial_weights(path: Path, *, reference: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """The weights in ``path`` (a plain ``.npz``, no pickles) and the file's SHA-256.

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, or its arrays do not have exactly the names and shapes
        of ``reference`` (the planned architecture at the planned patch size), or hold NaN/inf.
    """
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            weights = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"initial-weights {path}: cannot read it as an .npz of arrays ({exc})") from exc
    problem = m.weights_layout_mismatch(weights, reference)
    if problem is not None:
        raise ConfigError(f"initial-weights {path}: {problem} (the planned architecture, patch size and width)")
    return weights, hashlib.sha256(raw).hexdigest()


@contextlib.contextmanager
def _ledger_sink(paths: SessionPaths, say) -> Iterator[ClaimSink | None]:
    if paths.keys is None or not (paths.keys / COORDINATOR_KEY).is_file():
        say("no coordinator key: running without a privacy ledger")
        yield None
        return
    from coordinator.ledger import Ledger
    from protocols.signing import load_key_directory, load_private_key

    key = load_private_key(paths.keys / COORDINATOR_KEY)
    site_keys = load_key_directory(paths.keys / PUBLIC_KEYS)
    paths.ledger.parent.mkdir(parents=True, exist_ok=True)

    with Ledger.open(paths.ledger, key) as ledger:
        yield _LedgerSink(ledger, site_keys, say)


class _LedgerSink:
    """Appends the claims of accepted replies to the ledger (see :class:`ClaimSink`)."""

    def __init__(self, ledger: "Ledger", site_keys: Mapping[str, "VerifyKey"], say: Callable[[str], None]) -> None:
        self.ledger, self.site_keys, self.say = ledger, site_keys, say

    def claims_held(self, site: str) -> int:
        return self.ledger.site_state(site).next_seq

    def __call__(self, site: str, reply: m.WireMessage) -> None:
        from protocols.ledger import SignedClaim

        if site not in self.site_keys:
            raise IntegrityError(f"no public key for site {site} in the keys folder; enroll the site first")
        if isinstance(reply, m.Refusal):  # a "ledger-behind" refusal: earlier claims only, no release
            self._append_prior(site, reply)
            return
        signed = SignedClaim.from_bytes(reply.claim)  # type: ignore[attr-defined]
        check_claim_matches_reply(signed.claim, site, reply)
        self._append_prior(site, reply)
        self._append(site, signed, "")

    def _append_prior(self, site: str, reply: m.WireMessage) -> None:
        from protocols.ledger import SignedClaim

        for raw in getattr(reply, "prior_claims", None) or ():
            prior = SignedClaim.from_bytes(raw)
            if prior.claim.site != site:
                raise IntegrityError(f"a prior claim in the reply of {site} is for site {prior.claim.site}")
            if prior.claim.site_seq < self.claims_held(site):
                # Already recorded (resent because an earlier reply seemed lost): it must be the same
                # claim, else the site signed two different claims under one number.
                held = self.ledger.find_claim(site, prior.claim.site_seq)
                if held is None or held.claim.claim_hash != prior.claim.claim_hash:
                    raise IntegrityError(
                        f"{site} resent a claim number {prior.claim.site_seq} that differs from the one the ledger "
                        "holds under that number; its claim log and the ledger have diverged (run "
                        "`anonfed ledger show --ledger ledger.jsonl` at the site)"
                    )
                continue
            self._append(site, prior, "earlier claim")

    def _append(self, site: str, signed: "SignedClaim", what: str) -> None:
        entry = self.ledger.append_site_claim(signed, self.site_keys[site])
        self.say(f"ledger entry {entry.seq}: {site} {what + ' ' if what else ''}{signed.claim.mechanism.kind.value}, "
                 f"cumulative epsilon {signed.claim.cumulative_epsilon:.4g}")


def check_claim_matches_reply(claim: object, site: str, reply: m.WireMessage) -> None:
    """The signed claim must describe exactly this reply: site, run, round, artifact hash, epsilon, and for
    a train reply the weights the round started from.

    Raises
    ------
    IntegrityError
        Naming the first field that differs.
    """
    c = claim  # protocols.ledger.SiteClaim
    digest = (getattr(reply, "weights_sha256", None) or getattr(reply, "samples_sha256", None)
              or getattr(reply, "images_sha256", None))
    checks = [
        ("site", c.site, site),  # type: ignore[attr-defined]
        ("task", c.task, getattr(reply, "task", c.task)),  # type: ignore[attr-defined]
        ("run_id", c.run_id, reply.run_id),  # type: ignore[attr-defined]
        ("round", c.round, reply.round),  # type: ignore[attr-defined]
        ("artifact sha256", sorted(a.sha256 for a in c.artifacts), [digest]),  # type: ignore[attr-defined]
    ]
    if isinstance(reply, m.TrainReply):
        checks.append(("start weights sha256", c.start_weights_sha256, reply.start_weights_sha256))  # type: ignore[attr-defined]
    if hasattr(reply, "epsilon_cumulative"):
        checks.append(("cumulative epsilon", round(float(c.cumulative_epsilon), 9),  # type: ignore[attr-defined]
                       round(float(reply.epsilon_cumulative), 9)))  # type: ignore[attr-defined]
    if getattr(c, "kanon", None) is not None and hasattr(reply, "cluster_sizes"):
        checks.append(("k-anonymity groups", (c.kanon.k, tuple(c.kanon.cluster_sizes)),  # type: ignore[attr-defined]
                       (reply.k, tuple(reply.cluster_sizes))))  # type: ignore[attr-defined]
    for name, in_claim, in_reply in checks:
        if in_claim != in_reply:
            raise IntegrityError(f"the signed claim's {name} ({in_claim}) differs from the reply's ({in_reply}) from {site}")


def _progress_writer(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        log.info("%s", text)
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {text}\n")

    return say


def _atomic_json(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True, default=str), mode=0o644)
