"""Plain request handlers the ClientApp calls: request envelope in, guarded reply envelope out.

They never raise for a policy or data problem: they return a structured :class:`Refusal`. Every
reply, refusals included, passes the egress guard; a reply the guard blocks is replaced by a
refusal, and a refusal whose reason the guard blocks is replaced by one with a generic reason.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Mapping

import numpy as np

from agent.config import SiteConfig
from agent.guard import EgressPolicy, check_outgoing, find_identifying_text, real_fingerprints
from agent.guard.egress import SITE_ONLY_TASKS
from agent.site_service import policy as site_policy
from agent.site_service.claims import PendingClaim, claim_pins, require_ledger_caught_up, with_resent_claims
from agent.site_service.engine import TrainingEngine
from agent.site_service.state import ModelRecord, SiteState
from protocols import errors
from protocols import messages as m
from protocols.tasks import Task

log = logging.getLogger(__name__)

#: Signs a ledger claim for a release: (site, reply fields) -> pending signed claim, or None.
ClaimSigner = Callable[[SiteConfig, Mapping[str, object]], "PendingClaim | None"]

_REFUSAL_CODES: tuple[tuple[type[errors.AnonfedError], str], ...] = (
    (errors.BudgetExceededError, "budget-exceeded"),
    (errors.LedgerBehindError, m.LEDGER_BEHIND),
    (errors.TaskRefusedError, "task-refused"),
    (errors.EgressBlockedError, "egress-blocked"),
    (errors.KAnonymityError, "k-anonymity"),
    (errors.PolicyError, "policy"),
    (errors.MessageSchemaError, "bad-message"),
    (errors.BadInputError, "bad-input"),
    (errors.IntegrityError, "integrity"),
    (errors.AnonfedError, "error"),
)
_WITHHELD = "request refused; the reason was withheld by the egress guard, see the site log"
_GUARD_BLOCKED = ("the reply was blocked by the site's egress guard and not sent; the site's egress-blocked log "
                  "names the rule it broke")


def handle_status(site: SiteConfig, request: m.Envelope, *, engine: TrainingEngine) -> m.Envelope:
    """Identity, policy and spent budget of the site."""
    query = request.message
    assert isinstance(query, m.StatusQuery)
    try:
        spent = engine.epsilon_spent(site, dataset_id=query.dataset_id)
        record = _last_model_record(site)
        reply = m.StatusReply(
            site_id=site.site_id,
            accepted_tasks=tuple(sorted(t.value for t in site.privacy.accepted_tasks)),
            max_epsilon=float(site.privacy.max_epsilon),
            delta=float(site.privacy.delta),
            unit=site.privacy.unit,
            min_patients=site.privacy.min_patients,
            min_k=site.privacy.min_k,
            ksalsa_groups=site.privacy.ksalsa_groups,
            epsilon_spent=float(spent),
            num_patients=record.num_patients if record else 0,
            agent_version=_agent_version(),
        )
        return _guarded(site, m.Envelope(reply), EgressPolicy(blocked_log=SiteState(site).blocked_log), query, 0)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a refusal, never a crash
        return refusal(site, query, 0, exc)


def handle_train(
    site: SiteConfig, request: m.Envelope, *, engine: TrainingEngine, sign_claim: ClaimSigner | None = None
) -> m.Envelope:
    """Run one local DP round (``dpgan`` or ``stylegan-dp``) under the site's policy; return the guarded weights.

    The privacy spend is recorded by the engine (fsync'd) before anything is returned, so a crash
    between training and reply can only over-count. A request for a site-only task (``stylegan-local``)
    is refused before any data are read: those weights may never leave, whatever the plan.
    """
    ins = request.message
    assert isinstance(ins, m.TrainInstruction)
    state = SiteState(site)
    try:
        if ins.task in SITE_ONLY_TASKS:
            raise errors.EgressBlockedError(
                f"task {ins.task.value} trains a site-only model (no DP) whose weights never leave the site; "
                "train it at the site (`anonfed stylegan train`) or ask for stylegan-dp"
            )
        require_ledger_caught_up(site, ins.ledger_claims_held)  # before any budget is spent
        spent = engine.epsilon_spent(site, dataset_id=ins.dataset_id)
        terms = site_policy.decide_train_terms(site, ins, epsilon_spent=spent)
        data = engine.load_data(
            site, dataset_id=ins.dataset_id, patch_size=ins.patch_size, per_volume=ins.patches_per_volume, seed=ins.seed
        )
        site_policy.require_patients(site, data.num_patients)
        weights = dict(request.arrays) or None
        start_digest = m.weights_sha256(weights) if weights else None
        outcome = engine.train(site, data=data, weights=weights, instruction=ins, terms=terms)
        out_weights = {k: np.asarray(v, dtype=np.float32) for k, v in outcome.weights.items()}
        digest = m.weights_sha256(out_weights)
        mech = dict(outcome.mechanism or {})
        state.save_model(
            ModelRecord(
                run_id=ins.run_id, round=ins.round, dataset_id=ins.dataset_id, architecture=ins.architecture,
                patch_size=ins.patch_size, weights_sha256=digest, epsilon_cumulative=float(outcome.epsilon_cumulative),
                delta=terms.delta, unit=terms.unit.value, num_patients=outcome.num_patients,
            ),
            out_weights,
            slot=SiteState.model_slot(ins.task),
        )
        fingerprints = real_fingerprints(data.real_images)
        if ins.task is Task.DPGAN:  # the synthesize copy check compares DP-GAN samples with these patches
            state.save_fingerprints(fingerprints)
        fields = dict(
            run_id=ins.run_id, round=ins.round, site_id=site.site_id, task=ins.task, num_patients=outcome.num_patients,
            weights_sha256=digest, epsilon_round=float(outcome.epsilon_round),
            epsilon_cumulative=float(outcome.epsilon_cumulative),
            epsilon_next=_opt_float(outcome.epsilon_next), delta=float(terms.delta), unit=terms.unit,
            noise_multiplier=_opt_float(mech.get("noise_multiplier")), sample_rate=_opt_float(mech.get("sample_rate")),
            steps=_opt_int(mech.get("steps")), max_grad_norm=_opt_float(mech.get("max_grad_norm")),
            accountant=_opt_str(mech.get("accountant")), start_weights_sha256=start_digest,
        )
        pending = None
        if sign_claim is not None:
            size = len(m.canonical_weights_bytes(out_weights))
            pending = sign_claim(site, {**fields, "kind": "train", "unit": terms.unit.value,
                                        "dataset_id": ins.dataset_id, "size": size,
                                        "ledger_claims_held": ins.ledger_claims_held})
        reply = m.TrainReply(**fields, **_claim_fields(pending))
        metrics = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        policy = EgressPolicy(
            expected_weights=EgressPolicy.weights_spec(
                engine.reference_weights(architecture=ins.architecture, patch_size=ins.patch_size)
            ),
            forbidden_strings=data.patient_keys,
            real_fingerprints=fingerprints,
            blocked_log=state.blocked_log,
            start_weights_sha256=start_digest,
        )
        return _guarded(site, m.Envelope(reply, out_weights, metrics), policy, ins, ins.round, pending)
    except Exception as exc:  # noqa: BLE001
        return refusal(site, ins, ins.round, exc)


def handle_synthesize(
    site: SiteConfig, request: m.Envelope, *, engine: TrainingEngine, sign_claim: ClaimSigner | None = None
) -> m.Envelope:
    """Sample synthetic pairs from the site's last released DP model and return them guarded."""
    query = request.message
    assert isinstance(query, m.SynthesizeQuery)
    state = SiteState(site)
    try:
        site_policy.require_task(site, Task.SYNTHESIZE)
        require_ledger_caught_up(site, query.ledger_claims_held)
        record, weights = state.load_model()
        if (record.architecture, record.patch_size) != (query.architecture, query.patch_size):
            raise errors.BadInputError(
                f"the site's model is {record.architecture} at {record.patch_size} px, the query asked for "
                f"{query.architecture} at {query.patch_size} px; train that model first"
            )
        samples = np.asarray(
            engine.sample(weights, architecture=record.architecture, patch_size=record.patch_size, n=query.count, seed=query.seed),
            dtype=np.float32,
        )
        digest = m.array_sha256(samples)
        guarantee = f"({record.epsilon_cumulative:.4g}, {record.delta:.3g})-DP, unit {record.unit}"
        method = f"dpgan-{record.architecture}"
        fields = dict(
            run_id=query.run_id, round=query.round, site_id=site.site_id, count=query.count, method=method,
            guarantee=guarantee, model_round=record.round, epsilon_cumulative=record.epsilon_cumulative,
            delta=record.delta, unit=m.PrivacyUnit(record.unit), samples_sha256=digest,
        )
        pending = None
        if sign_claim is not None:
            pending = sign_claim(site, {**fields, "kind": "synthesize", "unit": record.unit,
                                        "ledger_claims_held": query.ledger_claims_held,
                                        "dataset_id": record.dataset_id, "size": len(m.canonical_array_bytes(samples))})
        reply = m.SynthesizeReply(**fields, **_claim_fields(pending))
        policy = EgressPolicy(
            synthetic_patch_size=record.patch_size,
            real_fingerprints=state.load_fingerprints(),
            blocked_log=state.blocked_log,
        )
        env = _guarded(site, m.Envelope(reply, {"samples": samples}), policy, query, query.round, pending)
        if isinstance(env.message, m.SynthesizeReply):
            state.save_release(digest, samples, {"run_id": query.run_id, "round": query.round, "method": method})
        return env
    except Exception as exc:  # noqa: BLE001
        return refusal(site, query, query.round, exc)


#: Runs a k-SALSA release: (site, agent.ksalsa.task.KsalsaRequest) -> KsalsaOutcome.
KsalsaRunner = Callable[..., object]


def handle_ksalsa(site: SiteConfig, request: m.Envelope, *, run_task: KsalsaRunner | None = None) -> m.Envelope:
    """A k-anonymous release (``agent.ksalsa.task``), guarded; its claim is recorded once it passes."""
    query = request.message
    assert isinstance(query, m.KsalsaQuery)
    try:
        from agent.ksalsa.baselines import Method
        from agent.ksalsa.task import KsalsaRequest

        if run_task is None:
            from agent.ksalsa.task import run_ksalsa_task as run_task
        require_ledger_caught_up(site, query.ledger_claims_held)
        req = KsalsaRequest(run_id=query.run_id, round=query.round, k=query.k, method=Method(query.method),
                            steps=query.steps, dataset_id=query.dataset_id)
        outcome = run_task(site, req)
        fields = dict(outcome.reply_fields(site.site_id, req))  # type: ignore[attr-defined]
        images = np.asarray(outcome.images)  # type: ignore[attr-defined]
        pending = with_resent_claims(site, outcome.claim, query.ledger_claims_held)  # type: ignore[attr-defined]
        reply = m.KsalsaReply(
            run_id=str(fields["run_id"]), round=int(fields["round"]), site_id=site.site_id, k=int(fields["k"]),
            min_k=int(fields["min_k"]), method=str(fields["method"]), count=int(fields["count"]),
            cluster_sizes=tuple(int(n) for n in fields["cluster_sizes"]),
            majority_grades=tuple(-1 if g is None else int(g) for g in fields["majority_grades"]),
            images_sha256=str(fields["images_sha256"]), guarantee=str(fields["guarantee"]),
            **_claim_fields(pending),
        )
        policy = EgressPolicy(site_min_k=site.privacy.min_k, blocked_log=SiteState(site).blocked_log)
        return _guarded(site, m.Envelope(reply, {"images": images}), policy, query, query.round, pending)
    except Exception as exc:  # noqa: BLE001
        return refusal(site, query, query.round, exc)


def refusal(site: SiteConfig, request: m.WireMessage, round_: int, exc: BaseException) -> m.Envelope:
    """A guarded structured refusal for ``exc`` (unexpected errors are logged here, not sent)."""
    code = "internal-error"
    exit_code = 1
    reason = "the site hit an internal error; details are in the site log"
    for cls, name in _REFUSAL_CODES:
        if isinstance(exc, cls):
            code, exit_code, reason = name, type(exc).exit_code, str(exc)
            break
    else:
        log.exception("request %s failed inside the site", request.KIND, exc_info=exc)
    if code != "internal-error":
        log.warning("refusing %s: %s (%s)", request.KIND, code, type(exc).__name__)
    run_id = getattr(request, "run_id", "unknown")
    msg = m.Refusal(
        run_id=run_id, round=int(round_), site_id=site.site_id, request_kind=request.KIND, code=code,
        exit_code=exit_code, reason=reason[: m.MAX_STRING_CHARS], epsilon_cumulative=None,
        prior_claims=(exc.resend or None) if isinstance(exc, errors.LedgerBehindError) else None,
    )
    try:
        policy = EgressPolicy(blocked_log=SiteState(site).blocked_log)
        if msg.prior_claims:  # resent claims leave only as the site's log holds them
            policy = dataclasses.replace(policy, claim_pins=claim_pins(site))
        check_outgoing(m.Envelope(msg), policy)
        return m.Envelope(msg)
    except (errors.EgressBlockedError, errors.BadInputError) as exc:
        if isinstance(exc, errors.BadInputError):  # the guard logs its own blocks
            log.warning("refusal withheld: its resent claims cannot be checked without the site key (%s)", exc)
        return m.Envelope(m.Refusal(
            run_id=run_id if _safe(run_id) else "unknown", round=int(round_), site_id=site.site_id,
            request_kind=request.KIND, code=code, exit_code=exit_code, reason=_WITHHELD, epsilon_cumulative=None,
        ))


def _claim_fields(pending: PendingClaim | None) -> dict[str, object]:
    """The ``claim`` and ``prior_claims`` fields of a reply carrying ``pending`` (None: no ledger)."""
    if pending is None:
        return {"claim": None, "prior_claims": None}
    return {"claim": pending.payload, "prior_claims": pending.prior or None}


def _guarded(
    site: SiteConfig,
    env: m.Envelope,
    policy: EgressPolicy,
    request: m.WireMessage,
    round_: int,
    pending: PendingClaim | None = None,
) -> m.Envelope:
    """``env`` if the guard lets it pass (its claim then recorded in the site log), else a refusal.

    With a claim, the guard also pins it to the site's key and claim log (:func:`claim_pins`).
    """
    try:
        if pending is not None:
            policy = dataclasses.replace(policy, claim_pins=claim_pins(site))
        check_outgoing(env, policy)
    except errors.EgressBlockedError:
        # The guard's findings may quote the blocked reply (a claim's keys, a shape, a number): they
        # stay in the site's blocked log, and the refusal only says that the guard blocked it.
        return refusal(site, request, round_, errors.EgressBlockedError(_GUARD_BLOCKED))
    if pending is not None:
        pending.commit()  # fsync'd in the site's own claim log before the reply leaves
    return env


def _last_model_record(site: SiteConfig) -> ModelRecord | None:
    try:
        return SiteState(site).load_model()[0]
    except errors.AnonfedError:
        return None


def _safe(text: str) -> bool:
    return find_identifying_text(text) is None


def _agent_version() -> str:
    try:
        return version("anonfed")
    except PackageNotFoundError:  # pragma: no cover - source checkout without install
        return "0+unknown"


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[arg-type]


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)
