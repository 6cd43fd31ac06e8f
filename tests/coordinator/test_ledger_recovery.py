"""The ledger recovers from a lost reply and from a round that crashed after charging its DP steps.

Real site handlers, the real StyleGAN engine (tiny 16 px model) and the site's real durable
accountant and claim log; the coordinator's real ledger and the auditor's verify. Without the
recovery, the round after a lost reply fails the site's claim chain ("claims missing") and the
round after a crash states a cumulative epsilon its recorded mechanisms cannot explain: either
way the site could never be recorded again.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from agent.flower_client.enroll import enroll  # noqa: E402
from agent.ledger import SiteClaimLog, claim_log_path  # noqa: E402
from agent.site_service.claims import ledger_signer  # noqa: E402
from agent.site_service.stylegan_engine import StyleGanEngine  # noqa: E402
from agent.stylegan.config import TrainingConfig  # noqa: E402
from agent.training.local_round import open_accountant  # noqa: E402
from coordinator.audit.verify import verify  # noqa: E402
from coordinator.deployment.pki import make_coordinator_ledger_key  # noqa: E402
from coordinator.rounds import Failure, FederationPlan  # noqa: E402
from coordinator.rounds.session import SessionPaths, run_session  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.ledger import DpSgdMechanism, LedgerEntry  # noqa: E402
from protocols.signing import load_key_directory  # noqa: E402
from protocols.tasks import Task  # noqa: E402

LOST_ROUND, CRASHED_ROUND = 2, 3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_lost_reply_and_crashed_round_are_claimed_in_the_next_reply(tmp_path, tiny_fundus, transport_for) -> None:
    keys, (site,) = _enrolled(tmp_path, "hospital-a")
    engine = _engine(tiny_fundus)
    real_train = engine.train

    def train(site_, **kw):
        out = real_train(site_, **kw)  # the engine has charged and recorded the round's steps
        if kw["instruction"].round == CRASHED_ROUND:
            raise RuntimeError("power cut after the privacy spend was recorded")
        return out

    engine.train = train  # type: ignore[method-assign]
    transport = transport_for({100: (site, engine)}, sign_claim=ledger_signer)
    exchange = transport.exchange

    def lossy_exchange(requests, *, round_, timeout_s):
        replies = exchange(requests, round_=round_, timeout_s=timeout_s)
        if round_ == LOST_ROUND:  # the site replied (and logged its claim); the reply never arrived
            return {n: Failure(n, "connection reset") for n in replies}
        return replies

    transport.exchange = lossy_exchange
    plan = _plan(rounds=4, local_steps=2, run_id="run-recover")
    out = tmp_path / "out"
    result = run_session(transport, plan, SessionPaths(out, keys))

    # Rounds 1 and 4 were aggregated; 2 was lost in transit, 3 was refused by the site.
    assert [t.sites_trained for t in result.timings] == [1, 0, 0, 1]
    assert [(r["round"], r["code"]) for r in result.refusals][:1] == [(LOST_ROUND, "transport")]
    assert [r["round"] for r in result.refusals] == [LOST_ROUND, CRASHED_ROUND]
    held = [ins.ledger_claims_held for _, ins in sorted(transport.train_instructions.items())]
    assert held == [0, 1, 1, 1]  # the coordinator tells the site how many of its claims it holds

    # The ledger holds every claim the site signed, in its order, and verifies.
    ledger = out / "ledger" / "ledger.jsonl"
    audit = verify(ledger, load_key_directory(keys / "public"))
    assert audit.ok
    claims = [LedgerEntry.from_line(line).claim for line in ledger.read_bytes().splitlines()]
    site_log = [c.claim for c in SiteClaimLog(claim_log_path(site.state.root)).claims()]
    assert claims == site_log
    assert [c.site_seq for c in claims] == [0, 1, 2, 3]
    assert [c.round for c in claims] == [1, LOST_ROUND, 4, 4]  # resent, then the catch-up, then round 4's own
    assert [len(c.artifacts) for c in claims] == [1, 1, 0, 1]  # the crashed round released nothing
    # Round 1 started from the site's own seed initialisation (StyleGAN); rounds 2 and 4 from the
    # round-1 average (nothing was aggregated in between); the catch-up claim names no model.
    starts = [c.start_weights_sha256 for c in claims]
    assert starts[0] is None and starts[2] is None and starts[1] is not None and starts[3] == starts[1]
    assert all(isinstance(c.mechanism, DpSgdMechanism) for c in claims)
    accountant = open_accountant(site, "fundus")
    assert sum(c.mechanism.steps for c in claims) == accountant.total_steps == 8  # every charged step is claimed
    assert claims[-1].cumulative_epsilon == pytest.approx(accountant.epsilon(), rel=1e-9)
    assert all(a.cumulative_epsilon < b.cumulative_epsilon for a, b in zip(claims, claims[1:]))


def test_a_ledger_far_behind_is_sent_claims_before_the_site_spends_again(tmp_path, tiny_fundus, transport_for,
                                                                         monkeypatch) -> None:
    """More missing claims than one reply carries: the site refuses ("ledger-behind") with the oldest
    ones and trains nothing, so no round is spent on a reply the ledger would have to reject."""
    monkeypatch.setattr("agent.site_service.claims.MAX_RESENT_CLAIMS", 1)
    keys, (site,) = _enrolled(tmp_path, "hospital-a")
    engine = _engine(tiny_fundus)
    real_train, trained_rounds = engine.train, []

    def train(site_, **kw):
        trained_rounds.append(kw["instruction"].round)
        return real_train(site_, **kw)

    engine.train = train  # type: ignore[method-assign]
    transport = transport_for({100: (site, engine)}, sign_claim=ledger_signer)
    exchange = transport.exchange

    def lossy_exchange(requests, *, round_, timeout_s):
        replies = exchange(requests, round_=round_, timeout_s=timeout_s)
        if round_ in (1, 2):  # the site replied and logged both claims; neither reply arrived
            return {n: Failure(n, "connection reset") for n in replies}
        return replies

    transport.exchange = lossy_exchange
    out = tmp_path / "out"
    result = run_session(transport, _plan(rounds=4, local_steps=2, run_id="run-behind"), SessionPaths(out, keys))

    assert trained_rounds == [1, 2, 4]  # round 3 was refused before any budget was spent
    assert [(r["round"], r["code"]) for r in result.refusals] == [(1, "transport"), (2, "transport"), (3, m.LEDGER_BEHIND)]
    held = [ins.ledger_claims_held for _, ins in sorted(transport.train_instructions.items())]
    assert held == [0, 0, 0, 1]  # the refusal brought claim 0, so round 4 only needs claim 1 resent
    assert [t.sites_trained for t in result.timings] == [0, 0, 0, 1]
    ledger = out / "ledger" / "ledger.jsonl"
    assert verify(ledger, load_key_directory(keys / "public")).ok
    claims = [LedgerEntry.from_line(line).claim for line in ledger.read_bytes().splitlines()]
    assert claims == [c.claim for c in SiteClaimLog(claim_log_path(site.state.root)).claims()]
    assert [c.round for c in claims] == [1, 2, 4]
    assert sum(c.mechanism.steps for c in claims) == open_accountant(site, "fundus").total_steps == 6


def test_a_k_anonymous_release_is_refused_until_the_ledger_catches_up(tmp_path, tiny_fundus, transport_for,
                                                                      monkeypatch) -> None:
    """The release collection after training takes the same path: a site too far ahead refuses the
    release before running it, and its refusal's claims reach the ledger."""
    monkeypatch.setattr("agent.site_service.claims.MAX_RESENT_CLAIMS", 1)
    keys, (site,) = _enrolled(tmp_path, "hospital-a")
    transport = transport_for({100: (site, _engine(tiny_fundus))}, sign_claim=ledger_signer)
    released = []
    transport.ksalsa_task = lambda site_, req: released.append(req)  # must never run
    exchange = transport.exchange

    def lossy_exchange(requests, *, round_, timeout_s):
        replies = exchange(requests, round_=round_, timeout_s=timeout_s)
        if round_ in (1, 2):  # both training replies are lost after the site logged their claims
            return {n: Failure(n, "connection reset") for n in replies}
        return replies

    transport.exchange = lossy_exchange
    plan = dataclasses.replace(_plan(rounds=2, local_steps=2, run_id="run-release-behind"), ksalsa_k=5)
    out = tmp_path / "out"
    result = run_session(transport, plan, SessionPaths(out, keys))

    assert released == []
    assert [(r["round"], r["code"]) for r in result.refusals] == [(1, "transport"), (2, "transport"),
                                                                  (4, m.LEDGER_BEHIND)]
    assert not result.outputs
    ledger = out / "ledger" / "ledger.jsonl"
    assert verify(ledger, load_key_directory(keys / "public")).ok
    claims = [LedgerEntry.from_line(line).claim for line in ledger.read_bytes().splitlines()]
    site_log = [c.claim for c in SiteClaimLog(claim_log_path(site.state.root)).claims()]
    assert claims == site_log[:1] and len(site_log) == 2  # the oldest missing claim came with the refusal


def test_only_a_ledger_behind_refusal_may_carry_claims() -> None:
    base = dict(run_id="r", round=1, site_id="hospital-a", request_kind="train", exit_code=11, reason="no",
                epsilon_cumulative=None, prior_claims=(b"{}",))
    with pytest.raises(m.MessageSchemaError, match="only a 'ledger-behind' refusal carries prior_claims"):
        m.Refusal(code="budget-exceeded", **base).validate()
    behind = m.Refusal(code=m.LEDGER_BEHIND, **base)
    assert m.from_recorddict(m.to_recorddict(m.Envelope(behind))).message == behind  # survives Flower records


def test_reply_with_a_prior_claim_of_another_site_is_rejected(tmp_path, tiny_fundus, transport_for) -> None:
    keys, enrolled = _enrolled(tmp_path, "hospital-a", "hospital-b")
    transport = transport_for({100 + i: (site, _engine(tiny_fundus)) for i, site in enumerate(enrolled)},
                              sign_claim=ledger_signer)
    exchange = transport.exchange

    def smuggling_exchange(requests, *, round_, timeout_s):
        replies = exchange(requests, round_=round_, timeout_s=timeout_s)
        if round_ == 1:  # hospital-a's reply carries hospital-b's claim as an "earlier" claim
            a, b = replies[100], replies[101]
            replies[100] = _with_prior_claims(a, b.message.claim)
        return replies

    transport.exchange = smuggling_exchange
    result = run_session(transport, _plan(rounds=1, local_steps=1, run_id="run-smuggle"), SessionPaths(tmp_path / "out", keys))
    rejected = [r for r in result.refusals if r["site"] == "hospital-a"]
    assert rejected and "is for site hospital-b" in str(rejected[0]["reason"])
    entries = (tmp_path / "out" / "ledger" / "ledger.jsonl").read_bytes().splitlines()
    assert [LedgerEntry.from_line(e).claim.site for e in entries] == ["hospital-b"]


def test_resent_claim_that_differs_from_the_recorded_one_is_rejected(tmp_path, tiny_fundus, transport_for) -> None:
    from agent.ledger import load_site_key
    from protocols.ledger import sign_claim

    keys, (site,) = _enrolled(tmp_path, "hospital-a")
    transport = transport_for({100: (site, _engine(tiny_fundus))}, sign_claim=ledger_signer)
    exchange = transport.exchange

    def equivocating_exchange(requests, *, round_, timeout_s):
        replies = exchange(requests, round_=round_, timeout_s=timeout_s)
        if round_ == 2:  # the reply "resends" claim 0, but not the one the ledger recorded in round 1
            first = SiteClaimLog(claim_log_path(site.state.root)).claims()[0].claim
            other = sign_claim(dataclasses.replace(first, epsilon=first.epsilon / 2, cumulative_epsilon=first.cumulative_epsilon / 2),
                               load_site_key(site))
            replies[100] = _with_prior_claims(replies[100], other.to_bytes())
        return replies

    transport.exchange = equivocating_exchange
    result = run_session(transport, _plan(rounds=2, local_steps=1, run_id="run-equivocate"),
                         SessionPaths(tmp_path / "out", keys))
    assert [r["round"] for r in result.refusals] == [2]
    assert "differs from the one the ledger holds" in str(result.refusals[0]["reason"])
    entries = (tmp_path / "out" / "ledger" / "ledger.jsonl").read_bytes().splitlines()
    assert [LedgerEntry.from_line(e).claim.site_seq for e in entries] == [0]


def _plan(*, rounds: int, local_steps: int, run_id: str) -> FederationPlan:
    return FederationPlan(task=Task.STYLEGAN_DP, rounds=rounds, architecture="tiny16", patch_size=16, patches_per_volume=2,
                          local_steps=local_steps, target_epsilon=6.0, delta=1e-5, expected_batch_patients=3,
                          dataset_id="fundus", consortium_budget=20.0, synth_count=0, run_id=run_id)


def _with_prior_claims(reply: m.Envelope, *claims: bytes) -> m.Envelope:
    """``reply`` as if the site had sent ``claims`` as its earlier claims (a forgery under test)."""
    return m.Envelope(dataclasses.replace(reply.message, prior_claims=claims), reply.arrays, reply.metrics)


def _enrolled(tmp_path: Path, *names: str):
    """The coordinator's key folder and enrolled sites (their public keys copied into it)."""
    keys = tmp_path / "coordinator-keys"
    make_coordinator_ledger_key(keys)
    sites = [_site(tmp_path / name, name) for name in names]
    for site in sites:
        shutil.copyfile(enroll(site).ledger_public_key, keys / "public" / f"{site.site_id}.pub")
    return keys, sites


def _engine(images) -> StyleGanEngine:
    return StyleGanEngine(load_images=lambda s: images, training=TrainingConfig(batch_size=4))


def _site(root: Path, site_id: str):
    from agent.config import parse_site_config

    (root / "data").mkdir(parents=True)
    raw = {"site_id": site_id, "sources": [{"path": "data"}], "state_dir": "state",
           "privacy": {"max_epsilon": 12.0, "delta": 1e-5, "accepted_tasks": ["stylegan-dp"]}}
    return parse_site_config(raw, base_dir=root)
