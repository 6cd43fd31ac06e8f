"""The federated run (DP-GAN or stylegan-dp): identify sites, train rounds under per-site budgets,
collect outputs.

1. ``status`` to every node: which site is behind which node, its policy and spent budget.
2. Each round: every site the budget allows gets the global weights; replies are attributed by the
   node that sent them; a refusal for budget stops scheduling that site; the others' weights are
   averaged (FedAvg weighted by patients). When no site can train, the run ends cleanly. A run may
   start without global weights (stylegan-dp: the coordinator cannot build a StyleGAN): every site
   then initialises from the round's seed and the first reply accepted fixes the names and shapes.
3. ``synthesize`` to every site that trained a DP-GAN: outputs are verified and stored
   content-addressed. A stylegan-dp run releases its aggregated generator instead.

Each site's epsilon is taken from its own reply and kept per site (never averaged). The time the
coordinator spends on its own work (checks, aggregation, storage, ledger) is measured apart from
the time spent waiting for sites, for the overhead benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol, TypeVar

import numpy as np

from coordinator.budget import ConsortiumBudget
from coordinator.rounds.plan import FederationPlan
from coordinator.rounds.transport import Failure, SiteTransport, registered_names
from coordinator.store import SyntheticStore
from coordinator.strategy import fedavg
from protocols import messages as m
from protocols.atomic_files import atomic_write
from protocols.errors import AnonfedError, IntegrityError
from protocols.tasks import Task

log = logging.getLogger(__name__)

class ClaimSink(Protocol):
    """The coordinator's ledger as the round loop sees it."""

    def __call__(self, site: str, reply: m.WireMessage) -> None:
        """Record the signed claims of a reply from ``site`` (its ``prior_claims``, then its ``claim``;
        a "ledger-behind" refusal carries prior claims only); raise IntegrityError (or another
        AnonfedError) to reject the reply."""

    def claims_held(self, site: str) -> int:
        """How many of ``site``'s claims the ledger holds (sent with each train instruction)."""


Progress = Callable[[str], None]


@dataclasses.dataclass
class RoundTiming:
    """Wall time of a round and the coordinator's own share of it."""

    round: int
    wall_s: float = 0.0
    wait_s: float = 0.0
    checks_s: float = 0.0
    aggregation_s: float = 0.0
    storage_s: float = 0.0
    sites_trained: int = 0

    @property
    def overhead_s(self) -> float:
        return self.checks_s + self.aggregation_s + self.storage_s

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclasses.dataclass
class FederationResult:
    """What a run did: per-site spend, outputs stored, timings, and why it stopped."""

    run_id: str
    rounds_completed: int
    stop_reason: str
    sites: dict[int, str]
    budget: dict[str, dict[str, object]]
    refusals: list[dict[str, object]]
    outputs: list[dict[str, object]]
    timings: list[RoundTiming]
    weights: dict[str, np.ndarray]

    def summary(self) -> dict[str, object]:
        """JSON-ready summary (no weights)."""
        return {
            "run_id": self.run_id,
            "rounds_completed": self.rounds_completed,
            "stop_reason": self.stop_reason,
            "sites": {str(k): v for k, v in sorted(self.sites.items())},
            "budget": self.budget,
            "consortium_epsilon_max_over_sites": max((float(b["spent"]) for b in self.budget.values()), default=0.0),
            "refusals": self.refusals,
            "outputs": self.outputs,
            "timings": [dict(dataclasses.asdict(t), overhead_s=t.overhead_s, overhead_fraction=t.overhead_fraction)
                        for t in self.timings],
        }


def run_federation(
    transport: SiteTransport,
    plan: FederationPlan,
    *,
    budget: ConsortiumBudget,
    store: SyntheticStore | None,
    initial_weights: Mapping[str, np.ndarray],
    on_claim: ClaimSink | None = None,
    progress: Progress | None = None,
) -> FederationResult:
    """Run ``plan`` over the nodes of ``transport``; see the module docstring for the steps."""
    say = progress or (lambda text: log.info("%s", text))
    sites = _identify_sites(transport, plan, budget, say)
    weights = {k: np.asarray(v, np.float32) for k, v in initial_weights.items()}
    refusals: list[dict[str, object]] = []
    timings: list[RoundTiming] = []
    trained_nodes: set[int] = set()
    stop_reason = f"all {plan.rounds} planned rounds done"
    completed = 0
    for rnd in range(1, plan.rounds + 1):
        timing = RoundTiming(rnd)
        t_round = time.perf_counter()
        chosen = []
        for node, site in sorted(sites.items()):
            ok, why = budget.schedulable(site)
            if ok:
                chosen.append(node)
            else:
                say(f"round {rnd}: not scheduling {site}: {why}")
        if not chosen:
            stop_reason = f"no site can train within its budget before round {rnd}"
            say(stop_reason)
            break
        say(f"round {rnd}/{plan.rounds}: training at {', '.join(sites[n] for n in chosen)}")
        instruction = plan.train_instruction(rnd)
        requests = {n: m.Envelope(_for_site(instruction, sites[n], on_claim), weights) for n in chosen}
        sent_digest = m.weights_sha256(weights) if weights else None
        t0 = time.perf_counter()
        replies = transport.exchange(requests, round_=rnd, timeout_s=plan.reply_timeout_s)
        timing.wait_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        updates = []
        accepted = []
        for node in chosen:
            site = sites[node]
            reply = replies.get(node, Failure(node, "no reply"))
            reference = weights or (updates[0][0] if updates else None)  # no global model yet: the first reply's
            update = _accept_train_reply(reply, node, site, rnd, instruction, reference, sent_digest, budget,
                                         on_claim, refusals, say)
            if update is not None:
                updates.append(update)
                accepted.append(reply)
                trained_nodes.add(node)
        timing.checks_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if store is not None:  # released weights are kept content-addressed, as the ledger names them
            for reply in accepted:
                store.add_weights(dict(reply.arrays), claimed_sha256=reply.message.weights_sha256)  # type: ignore[union-attr]
        timing.storage_s = time.perf_counter() - t0
        if not updates:
            say(f"round {rnd}: no site returned weights; the global model is unchanged")
            timing.wall_s = time.perf_counter() - t_round
            timings.append(timing)
            continue
        t0 = time.perf_counter()
        weights = fedavg(updates)
        timing.aggregation_s = time.perf_counter() - t0
        timing.sites_trained = len(updates)
        timing.wall_s = time.perf_counter() - t_round
        timings.append(timing)
        completed = rnd
        spent = ", ".join(f"{s}={budget.sites[s].spent:.3g}" for s in sorted(budget.sites))
        say(f"round {rnd}: aggregated {len(updates)} site(s); epsilon per site: {spent}")
    outputs = _collect_outputs(transport, plan, sites, trained_nodes, store, on_claim, refusals, timings, say)
    if plan.ksalsa_k > 0 and store is not None:
        outputs += _collect_ksalsa(transport, plan, sites, store, on_claim, refusals, timings, say)
    return FederationResult(
        run_id=plan.run_id, rounds_completed=completed, stop_reason=stop_reason, sites=dict(sites),
        budget=budget.snapshot(), refusals=refusals, outputs=outputs, timings=timings, weights=weights,
    )


_Request = TypeVar("_Request", m.TrainInstruction, m.SynthesizeQuery, m.KsalsaQuery)


def _for_site(request: _Request, site: str, on_claim: ClaimSink | None) -> _Request:
    """``request`` with how many of ``site``'s claims the ledger holds (so the site resends the rest)."""
    if on_claim is None:
        return request
    return dataclasses.replace(request, ledger_claims_held=on_claim.claims_held(site))


def _identify_sites(transport: SiteTransport, plan: FederationPlan, budget: ConsortiumBudget, say: Progress) -> dict[int, str]:
    nodes = transport.node_ids()
    names = registered_names(transport)
    query = m.StatusQuery(run_id=plan.run_id, dataset_id=plan.dataset_id)
    replies = transport.exchange({n: m.Envelope(query) for n in nodes}, round_=0, timeout_s=plan.reply_timeout_s)
    sites: dict[int, str] = {}
    for node in nodes:
        reply = replies.get(node)
        if not isinstance(reply, m.Envelope) or not isinstance(reply.message, m.StatusReply):
            say(f"node {node}: no usable status reply ({_describe(reply)}); leaving it out")
            continue
        status = reply.message
        if names.get(node) and names[node] != status.site_id:
            say(f"node {node}: registered as {names[node]} but answers as {status.site_id}; leaving it out")
            continue
        if status.site_id in sites.values():
            say(f"node {node}: claims site {status.site_id}, which another node already is; leaving it out")
            continue
        sites[node] = status.site_id
        budget.register(status.site_id, site_max_epsilon=status.max_epsilon, spent=status.epsilon_spent)
        ksalsa = (f" (min k {status.min_k}, {status.ksalsa_groups} groups)"
                  if Task.KSALSA.value in status.accepted_tasks else "")
        say(f"site {status.site_id} (node {node}): max epsilon {status.max_epsilon:g}, spent {status.epsilon_spent:.3g}, "
            f"accepts {', '.join(status.accepted_tasks)}{ksalsa}")
    return sites


def _accept_train_reply(
    reply: m.Envelope | Failure,
    node: int,
    site: str,
    rnd: int,
    instruction: m.TrainInstruction,
    weights: Mapping[str, np.ndarray] | None,
    sent_digest: str | None,
    budget: ConsortiumBudget,
    on_claim: ClaimSink | None,
    refusals: list[dict[str, object]],
    say: Progress,
) -> tuple[dict[str, np.ndarray], int] | None:
    """Check one train reply against ``instruction``, the global ``weights`` (None: no model yet) and
    ``sent_digest`` (weights_sha256 of the weights sent this round, None if none); returns (weights,
    patients) to aggregate, or None."""
    if isinstance(reply, Failure):
        say(f"round {rnd}: {site} failed: {reply.reason}")
        refusals.append({"round": rnd, "site": site, "code": "transport", "reason": reply.reason})
        return None
    msg = reply.message
    try:
        if isinstance(msg, m.Refusal):
            _note_refusal(msg, site, rnd, f"round {rnd}", on_claim, refusals, say)
            if msg.code == "budget-exceeded":
                budget.mark_exhausted(site, "the site refused: its own budget is spent")
            return None
        if not isinstance(msg, m.TrainReply):
            raise IntegrityError(f"expected a train reply, got {msg.KIND}")
        if msg.site_id != site or msg.round != rnd:
            raise IntegrityError(
                f"reply from node {node} says site {msg.site_id} round {msg.round}; expected {site} round {rnd}"
            )
        if msg.task is not instruction.task:
            raise IntegrityError(f"reply from {site} is for task {msg.task.value}; the round asked for "
                                 f"{instruction.task.value}")
        if not reply.arrays:
            raise IntegrityError("the train reply carries no weights")
        if m.weights_sha256(reply.arrays) != msg.weights_sha256:
            raise IntegrityError("returned weights do not match their stated sha256")
        if msg.start_weights_sha256 != sent_digest:
            # The site's signed claim repeats this digest: the ledger must name the model actually sent.
            raise IntegrityError(f"the reply says the round started from weights {msg.start_weights_sha256}, "
                                 f"not the ones sent ({sent_digest})")
        # Without a global model yet (first round, no initial weights) the reply is checked against itself.
        problem = m.weights_layout_mismatch(reply.arrays, reply.arrays if weights is None else weights)
        if problem is not None:
            raise IntegrityError(f"returned weights: {problem}")
        budget.record_spend(site, epsilon_round=msg.epsilon_round, epsilon_cumulative=msg.epsilon_cumulative,
                            epsilon_next=msg.epsilon_next)
        if on_claim is not None and msg.claim is not None:
            on_claim(site, msg)
    except AnonfedError as exc:
        say(f"round {rnd}: rejected the update from {site}: {exc}")
        refusals.append({"round": rnd, "site": site, "code": "rejected", "reason": str(exc)})
        return None
    return {k: np.asarray(v, np.float32) for k, v in reply.arrays.items()}, msg.num_patients


def _collect_outputs(
    transport: SiteTransport,
    plan: FederationPlan,
    sites: Mapping[int, str],
    trained_nodes: set[int],
    store: SyntheticStore | None,
    on_claim: ClaimSink | None,
    refusals: list[dict[str, object]],
    timings: list[RoundTiming],
    say: Progress,
) -> list[dict[str, object]]:
    if store is None or plan.synth_count == 0 or not trained_nodes:
        return []
    if plan.task is not Task.DPGAN:
        say(f"{plan.task.value}: no synthesize query (it releases DP-GAN pairs); the aggregated generator is the "
            "release and can be sampled without the sites")
        return []
    rnd = plan.rounds + 1
    nodes = sorted(trained_nodes)
    say(f"collecting {plan.synth_count} synthetic pairs from each of {len(nodes)} site(s)")
    timing = RoundTiming(rnd)
    t_round = time.perf_counter()
    requests = {n: m.Envelope(_for_site(plan.synthesize_query(rnd, i), sites[n], on_claim))
                for i, n in enumerate(nodes)}
    t0 = time.perf_counter()
    replies = transport.exchange(requests, round_=rnd, timeout_s=plan.reply_timeout_s)
    timing.wait_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs = []
    for node in nodes:
        site = sites[node]
        reply = replies.get(node, Failure(node, "no reply"))
        try:
            msg = _release_reply(reply, m.SynthesizeReply, site=site, what="synthesize", rnd=rnd,
                                 on_claim=on_claim, refusals=refusals, say=say)
            if msg is None:
                continue
            samples = reply.arrays.get("samples")
            if samples is None or samples.shape[0] != msg.count:
                raise IntegrityError("synthesize reply lacks its samples or has the wrong count")
            row, new = store.add(
                samples, claimed_sha256=msg.samples_sha256, run_id=msg.run_id, site=site, round=msg.model_round,
                method=msg.method, guarantee=msg.guarantee, epsilon=msg.epsilon_cumulative, delta=msg.delta,
                unit=msg.unit.value, record=_claim_recorder(on_claim, site, msg),
            )
            outputs.append({"site": site, "sha256": row.sha256, "count": row.count, "method": row.method,
                            "guarantee": row.guarantee, "new": new, "path": str(store.blob_path(row.sha256))})
            say(f"stored {row.count} synthetic pairs from {site} ({row.guarantee}) as {row.sha256[:12]}")
        except AnonfedError as exc:
            say(f"synthesize: rejected the output of {site}: {exc}")
            refusals.append({"round": rnd, "site": site, "code": "rejected", "reason": str(exc)})
    timing.storage_s = time.perf_counter() - t0
    timing.wall_s = time.perf_counter() - t_round
    timings.append(timing)
    return outputs


def _collect_ksalsa(
    transport: SiteTransport,
    plan: FederationPlan,
    sites: Mapping[int, str],
    store: SyntheticStore,
    on_claim: ClaimSink | None,
    refusals: list[dict[str, object]],
    timings: list[RoundTiming],
    say: Progress,
) -> list[dict[str, object]]:
    """Ask every site for a k-anonymous release (k-SALSA or a k-Same baseline) and store it."""
    rnd = plan.rounds + 2
    say(f"asking {len(sites)} site(s) for a k-anonymous release: {plan.ksalsa_method}, k = {plan.ksalsa_k}")
    timing = RoundTiming(rnd)
    t_round = time.perf_counter()
    t0 = time.perf_counter()
    requests = {n: m.Envelope(_for_site(plan.ksalsa_query(rnd), sites[n], on_claim)) for n in sites}
    replies = transport.exchange(requests, round_=rnd, timeout_s=plan.reply_timeout_s)
    timing.wait_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs = []
    for node, site in sorted(sites.items()):
        reply = replies.get(node, Failure(node, "no reply"))
        try:
            msg = _release_reply(reply, m.KsalsaReply, site=site, what="k-anonymous release", rnd=rnd,
                                 on_claim=on_claim, refusals=refusals, say=say)
            if msg is None:
                continue
            if msg.k < plan.ksalsa_k:
                raise IntegrityError(f"{site} released with k = {msg.k}, below the requested {plan.ksalsa_k}")
            images = reply.arrays.get("images")
            if images is None or images.shape[0] != msg.count:
                raise IntegrityError("k-SALSA reply lacks its images or has the wrong count")
            row, new = store.add(images, claimed_sha256=msg.images_sha256, run_id=msg.run_id, site=site,
                                 round=msg.round, method=msg.method, guarantee=msg.guarantee,
                                 record=_claim_recorder(on_claim, site, msg))
            outputs.append({"site": site, "sha256": row.sha256, "count": row.count, "method": row.method,
                            "guarantee": row.guarantee, "new": new, "path": str(store.blob_path(row.sha256)),
                            "cluster_sizes": list(msg.cluster_sizes)})
            say(f"stored {row.count} k-anonymous image(s) from {site} (groups of {min(msg.cluster_sizes)}+ patients) "
                f"as {row.sha256[:12]}")
        except AnonfedError as exc:
            say(f"k-anonymous release: rejected the output of {site}: {exc}")
            refusals.append({"round": rnd, "site": site, "code": "rejected", "reason": str(exc)})
    timing.storage_s = time.perf_counter() - t0
    timing.wall_s = time.perf_counter() - t_round
    timings.append(timing)
    return outputs


def _release_reply(
    reply: object,
    expected: type,
    *,
    site: str,
    what: str,
    rnd: int,
    on_claim: ClaimSink | None,
    refusals: list[dict[str, object]],
    say: Progress,
) -> m.WireMessage | None:
    """The release message of ``reply`` if it is an ``expected`` reply from ``site``.

    A refusal is recorded and gives None (the collection goes on with the other sites).

    Raises
    ------
    IntegrityError
        On a transport failure, or a reply of another kind or from another site than asked.
    """
    if isinstance(reply, Failure):
        raise IntegrityError(reply.reason)
    msg = reply.message  # type: ignore[attr-defined]
    if isinstance(msg, m.Refusal):
        _note_refusal(msg, site, rnd, what, on_claim, refusals, say)
        return None
    if not isinstance(msg, expected) or msg.site_id != site:
        raise IntegrityError(f"expected a {what} reply from {site}")
    return msg


def _claim_recorder(on_claim: ClaimSink | None, site: str, msg: m.WireMessage) -> Callable[[], None] | None:
    """What the store calls to record a verified release's claim before keeping the release."""
    if on_claim is None or getattr(msg, "claim", None) is None:
        return None
    return lambda: on_claim(site, msg)


def _note_refusal(msg: m.Refusal, site: str, rnd: int, what: str, on_claim: ClaimSink | None,
                  refusals: list[dict[str, object]], say: Progress) -> None:
    """Record a refusal; the earlier claims a "ledger-behind" refusal carries go to the ledger."""
    say(f"{what}: {site} refused ({msg.code}): {msg.reason}")
    refusals.append({"round": rnd, "site": site, "code": msg.code, "reason": msg.reason})
    if msg.prior_claims and on_claim is not None:
        on_claim(site, msg)


def _describe(reply: object) -> str:
    if isinstance(reply, Failure):
        return reply.reason
    if isinstance(reply, m.Envelope):
        return reply.message.KIND
    return "none"


def write_weights(path: Path, weights: Mapping[str, np.ndarray]) -> None:
    """Save the final global weights as a plain ``.npz`` (no pickles)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:  # a crash never leaves a half-written model behind
        np.savez(fh, **weights)
