"""stylegan-dp through the plain train handler: policy, durable spend before the reply, guarded
weights, signed claim; stylegan-local never gets weights out (tiny 16 px StyleGAN, fundus phantoms)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.flower_client.enroll import enroll  # noqa: E402
from agent.site_service import handle_train  # noqa: E402
from agent.site_service.claims import ledger_signer  # noqa: E402
from agent.site_service.engine import engine_for_task  # noqa: E402
from agent.site_service.state import SiteState  # noqa: E402
from agent.site_service.stylegan_engine import StyleGanEngine  # noqa: E402
from agent.stylegan.config import TrainingConfig  # noqa: E402
from agent.training.local_round import current_epsilon, open_accountant  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.errors import MessageSchemaError  # noqa: E402
from protocols.ledger import DpSgdMechanism, SignedClaim  # noqa: E402
from protocols.tasks import PrivacyUnit, Task  # noqa: E402

ACCEPTS = ["stylegan-dp", "dpgan", "synthesize"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _instruction(round_: int = 1, **over) -> m.TrainInstruction:
    base = dict(
        run_id="run-sg", round=round_, task=Task.STYLEGAN_DP, dataset_id="fundus", architecture="tiny16",
        patch_size=16, patches_per_volume=2, local_steps=2, total_planned_steps=4, target_epsilon=6.0, delta=1e-5,
        unit=PrivacyUnit.PATIENT, expected_batch_patients=3, max_grad_norm=1.0, seed=5,
    )
    base.update(over)
    return m.TrainInstruction(**base)


def _engine(photos) -> StyleGanEngine:
    return StyleGanEngine(load_images=lambda site: photos, training=TrainingConfig(batch_size=4))


def _must_not_load(site):
    raise AssertionError("the site's images must not be read for a refused request")


def test_accepted_round_returns_guarded_float32_weights_mechanism_and_claim(tmp_path, make_site, tiny_fundus) -> None:
    site = make_site(tmp_path, accepted_tasks=ACCEPTS, max_epsilon=8.0)
    enroll(site)  # the site's ledger signing key
    engine = _engine(tiny_fundus)
    steps_when_signed = []

    def sign(site_, fields):  # the claim is signed after training, before the guard and the reply
        steps_when_signed.append(open_accountant(site_, "fundus").total_steps)
        return ledger_signer(site_, fields)

    out = handle_train(site, m.Envelope(_instruction()), engine=engine, sign_claim=sign)
    reply = out.message
    assert isinstance(reply, m.TrainReply), reply
    assert steps_when_signed == [2]  # the spend was durable before anything was released
    assert reply.task is Task.STYLEGAN_DP and reply.num_patients == 10
    assert reply.epsilon_cumulative == pytest.approx(current_epsilon(site, "fundus"), rel=1e-12)
    assert 0 < reply.epsilon_round <= reply.epsilon_cumulative < reply.epsilon_next <= 8.0
    assert (reply.steps, reply.max_grad_norm, reply.accountant, reply.unit) == (2, 1.0, "prv", PrivacyUnit.PATIENT)
    assert reply.sample_rate == pytest.approx(3 / 10) and reply.noise_multiplier > 0
    spec = engine.reference_weights(architecture="tiny16", patch_size=16)
    assert set(out.arrays) == set(spec) and all(a.dtype == np.float32 for a in out.arrays.values())
    assert {k.split(".", 1)[0] for k in out.arrays} == {"generator", "generator_ema", "discriminator"}
    assert reply.weights_sha256 == m.weights_sha256(out.arrays)
    assert out.metrics["discriminator_steps"] == 2
    assert not {"d_loss", "discriminator_loss"} & set(out.metrics)  # computed on real images: stays at the site
    claim = SignedClaim.from_bytes(reply.claim).claim
    assert claim.task is Task.STYLEGAN_DP and claim.dataset == "fundus"
    assert isinstance(claim.mechanism, DpSgdMechanism) and claim.mechanism.steps == 2
    assert claim.cumulative_epsilon == pytest.approx(reply.epsilon_cumulative)
    # kept apart from the DP-GAN model that synthesize queries sample
    record, _ = SiteState(site).load_model(slot=SiteState.model_slot(Task.STYLEGAN_DP))
    assert record.weights_sha256 == reply.weights_sha256
    assert not (SiteState(site).root / "last_model.json").exists()
    back = m.from_recorddict(m.to_recorddict(out), expect=(m.TrainReply,))
    assert back.message == reply


def test_round_past_the_site_budget_is_refused_without_spending(tmp_path, make_site, tiny_fundus) -> None:
    site = make_site(tmp_path, accepted_tasks=ACCEPTS, max_epsilon=3.0)
    engine = _engine(tiny_fundus)
    # The plan spends the whole budget in one round; the second round would pass it.
    first = handle_train(site, m.Envelope(_instruction(1, local_steps=2, total_planned_steps=2, target_epsilon=3.0)),
                         engine=engine)
    assert isinstance(first.message, m.TrainReply), first.message
    spent = current_epsilon(site, "fundus")
    second = handle_train(site, m.Envelope(_instruction(2, local_steps=2, total_planned_steps=2, target_epsilon=3.0)),
                          engine=engine)
    assert isinstance(second.message, m.Refusal)
    assert second.message.code == "budget-exceeded" and "max_epsilon" in second.message.reason
    assert not second.arrays
    assert open_accountant(site, "fundus").total_steps == 2 and current_epsilon(site, "fundus") == spent


def test_site_that_does_not_accept_stylegan_dp_refuses(tmp_path, make_site) -> None:
    site = make_site(tmp_path, accepted_tasks=["dpgan", "synthesize"])
    out = handle_train(site, m.Envelope(_instruction()), engine=StyleGanEngine(load_images=_must_not_load))
    assert out.message.code == "task-refused" and "stylegan-dp" in out.message.reason  # type: ignore[union-attr]
    assert not out.arrays and open_accountant(site, "fundus").total_steps == 0


@pytest.mark.parametrize(
    ("over", "pattern"),
    [
        ({"dataset_id": "tof"}, "accounted under dataset 'fundus'"),  # the spend would land in the wrong accountant
        ({"architecture": "wgan-gp"}, "not a StyleGAN configuration"),
        ({"patch_size": 32}, "set patch-size to 16"),
    ],
)
def test_round_that_does_not_fit_the_stylegan_data_is_refused(tmp_path, make_site, tiny_fundus, over, pattern) -> None:
    site = make_site(tmp_path, accepted_tasks=ACCEPTS)
    out = handle_train(site, m.Envelope(_instruction(**over)), engine=_engine(tiny_fundus))
    assert out.message.code == "bad-input" and pattern in out.message.reason  # type: ignore[union-attr]
    assert open_accountant(site, "fundus").total_steps == 0


def test_stylegan_local_request_gets_no_weights(tmp_path, make_site) -> None:
    with pytest.raises(MessageSchemaError, match="stylegan-local"):  # not even expressible on the wire
        _instruction(task=Task.STYLEGAN_LOCAL)
    # A request forged past the schema is still refused before any image is read.
    forged = _instruction()
    object.__setattr__(forged, "task", Task.STYLEGAN_LOCAL)
    site = make_site(tmp_path, accepted_tasks=["stylegan-local", "stylegan-dp"])
    out = handle_train(site, m.Envelope(forged), engine=StyleGanEngine(load_images=_must_not_load))
    assert out.message.code == "egress-blocked" and "site-only" in out.message.reason  # type: ignore[union-attr]
    assert not out.arrays


def test_engine_for_task_picks_the_stylegan_engine() -> None:
    from agent.site_service.dpgan_engine import DpGanEngine

    assert isinstance(engine_for_task(Task.STYLEGAN_DP), StyleGanEngine)
    assert isinstance(engine_for_task(Task.DPGAN), DpGanEngine)
