"""Epsilon recorded by real DP-SGD training (Opacus, and the agent's durable accountant) passes the
auditor's independent recomputation with dp-accounting."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
opacus = pytest.importorskip("opacus")

from agent.ledger import SiteClaimLog, sign_claim  # noqa: E402
from coordinator.audit.recompute import EpsilonRecomputer  # noqa: E402
from coordinator.audit.verify import verify  # noqa: E402
from coordinator.ledger import Ledger  # noqa: E402
from protocols.ledger import DpSgdMechanism  # noqa: E402
from protocols.signing import SigningKey  # noqa: E402
from protocols.tasks import PrivacyUnit, Task  # noqa: E402

DELTA = 1e-5


def _train_rounds(accountant: str, rounds: int) -> list[tuple[float, float, int, float]]:
    """Tiny real DP-SGD (Poisson sampling) for ``rounds`` rounds of 30 steps; per round (sigma, q, steps, epsilon)."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=gen)
    y = (x[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=20, generator=gen)
    model = torch.nn.Linear(10, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = opacus.PrivacyEngine(accountant=accountant)
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        poisson_sampling=True, noise_generator=torch.Generator().manual_seed(1),
    )
    out = []
    for _ in range(rounds):
        steps = 0
        while steps < 30:
            for xb, yb in loader:
                if steps == 30:
                    break
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
                steps += 1
        sigma, q, _ = engine.accountant.history[-1]
        out.append((sigma, q, steps, float(engine.get_epsilon(DELTA))))
    # Opacus merges identical consecutive segments: the whole history is rounds*30 steps at one (sigma, q).
    assert sum(n for _, _, n in engine.accountant.history) == 30 * rounds
    return out


def _ledger_from(tmp_path, per_round, accountant_name: str):
    key, ckey = SigningKey.generate(), SigningKey.generate()
    log = SiteClaimLog(tmp_path / "claims.jsonl")
    prev = 0.0
    with Ledger.open(tmp_path / "ledger.jsonl", ckey) as ledger:
        for rnd, (sigma, q, steps, eps) in enumerate(per_round):
            claim = log.new_claim(
                run_id="run-real", round=rnd, site="hospital-a", key_id=key.key_id, task=Task.DPGAN, dataset="toy",
                mechanism=DpSgdMechanism(sigma, q, steps, 1.0, DELTA, PrivacyUnit.IMAGE, accountant_name),
                epsilon=eps - prev, cumulative_epsilon=eps,
            )
            signed = sign_claim(claim, key)
            log.record(signed)
            ledger.append_site_claim(signed, key.public)
            prev = eps
    return tmp_path / "ledger.jsonl", {"hospital-a": key.public, "coordinator": ckey.public}


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_opacus_epsilon_agrees_with_recomputation(tmp_path, accountant) -> None:
    per_round = _train_rounds(accountant, rounds=2)
    assert per_round[1][3] > per_round[0][3] > 0
    path, keys = _ledger_from(tmp_path, per_round, f"opacus-{accountant}")
    result = verify(path, keys)
    assert result.ok and result.entries == 2
    rec = EpsilonRecomputer()
    history = EpsilonRecomputer.EMPTY
    for sigma, q, steps, eps in per_round:
        history = rec.extend(history, sample_rate=q, noise_multiplier=sigma, steps=steps)
        check = rec.check(eps, history, DELTA)
        assert check.ok, check.rule
        if accountant == "prv":  # tighter than RDP: accepted by the PLD rule, not the RDP one
            assert check.rule == "within PLD tolerance" and eps < check.rdp
        else:  # Opacus' and dp-accounting's RDP evaluations agree closely
            assert abs(eps - check.rdp) <= 5e-3 * check.rdp


def test_durable_accountant_epsilon_agrees_with_recomputation(tmp_path) -> None:
    dp = pytest.importorskip("agent.dp.durable_accountant")
    acc = dp.DurableAccountant(tmp_path / "acc" / "tof.json", kind=dp.AccountantKind.PRV, delta=DELTA)
    per_round = []
    for sigma, q, steps in [(1.1, 0.05, 40), (0.9, 0.08, 25)]:
        eps = acc.reserve(noise_multiplier=sigma, sample_rate=q, steps=steps, unit=PrivacyUnit.PATIENT, max_epsilon=50.0)
        per_round.append((sigma, q, steps, eps))
    path, keys = _ledger_from(tmp_path, per_round, "agent-durable-prv")
    assert verify(path, keys).ok
