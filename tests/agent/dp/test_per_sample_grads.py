"""Per-sample and per-patient gradients of the full critic loss equal a one-sample-at-a-time loop."""

from __future__ import annotations

import pytest
import torch

from agent.dp.critic_loss import CriticObjective, adversarial_terms, batch_critic_losses, fake_terms, public_fake_losses
from agent.dp.per_sample_grads import fast_per_sample_grads, reference_per_sample_grads
from agent.models import GanSpec, build_pair

ENGINES = {"fast": fast_per_sample_grads, "torch.func": reference_per_sample_grads}
B = 6


def _setup(arch: str):
    _, critic = build_pair(GanSpec(arch, 32, width=8), seed=3)
    critic = critic.double()
    g = torch.Generator().manual_seed(7)
    real = torch.rand(B, 2, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    fake = torch.rand(B, 2, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    alpha = torch.rand(B, generator=g, dtype=torch.float64)
    objective = CriticObjective(gradient_penalty=arch != "dcgan")
    return critic, real, fake, alpha, objective


def _loop_grads(critic, real, fake, alpha, objective) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(real.shape[0]):
        critic.zero_grad(set_to_none=True)
        batch_critic_losses(critic, real[i : i + 1], fake[i : i + 1], alpha[i : i + 1], objective).sum().backward()
        out.append({k: p.grad.clone() for k, p in critic.named_parameters()})
    return out


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    rel = float((got - want).norm() / want.norm().clamp_min(1e-30))
    assert rel < 1e-5, f"{what}: relative error {rel:.2e}"


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("arch", ["wgan-gp", "wgan-gp-sn", "dcgan"])
def test_per_sample_grads_equal_loop(arch: str, engine: str) -> None:
    critic, real, fake, alpha, objective = _setup(arch)
    loop = _loop_grads(critic, real, fake, alpha, objective)
    grads, losses = ENGINES[engine](critic, real, fake, alpha, objective)
    assert set(grads) == {k for k, _ in critic.named_parameters()}
    for i in range(B):
        for k in grads:
            _assert_close(grads[k][i], loop[i][k], f"{arch}/{engine} sample {i} {k}")
    ref_losses = batch_critic_losses(critic, real, fake, alpha, objective).detach()
    _assert_close(losses, ref_losses, "losses")


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("arch", ["wgan-gp", "wgan-gp-sn"])
def test_per_patient_grads_are_sums_of_a_patients_samples(arch: str, engine: str) -> None:
    critic, real, fake, alpha, objective = _setup(arch)
    patients = torch.tensor([2, 0, 2, 1, 0, 2])
    loop = _loop_grads(critic, real, fake, alpha, objective)
    grads, _ = ENGINES[engine](critic, real, fake, alpha, objective, unit_index=patients, num_units=3)
    for p in range(3):
        members = (patients == p).nonzero().flatten().tolist()
        for k in grads:
            want = sum(loop[i][k] for i in members)
            _assert_close(grads[k][p], want, f"{arch}/{engine} patient {p} {k}")


def test_spectral_norm_vectors_are_held_fixed_and_updated_without_data() -> None:
    critic, real, fake, alpha, objective = _setup("wgan-gp-sn")
    before = critic.sn_u0.clone()
    fast_per_sample_grads(critic, real, fake, alpha, objective)
    assert torch.equal(critic.sn_u0, before)
    with torch.no_grad():
        critic.convs[0].weight.mul_(torch.linspace(0.5, 2.0, critic.convs[0].weight.numel()).view_as(critic.convs[0].weight).double())
    critic.update_spectral_vectors(iterations=50)
    w = critic.convs[0].weight.detach().reshape(critic.convs[0].weight.shape[0], -1)
    sigma_power = torch.dot(critic.sn_u0, w @ critic.sn_v0)
    assert float(sigma_power) == pytest.approx(float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-6)


def test_fast_engine_refuses_other_critics() -> None:
    _, real, fake, alpha, objective = _setup("wgan-gp")
    with pytest.raises(TypeError, match="needs a ConvCritic"):
        fast_per_sample_grads(torch.nn.Linear(3, 1), real, fake, alpha, objective)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("arch", ["wgan-gp", "wgan-gp-sn", "dcgan"])
def test_without_the_fake_term_the_grads_are_the_full_losss_minus_the_fake_scores(arch: str, engine: str) -> None:
    critic, real, fake, alpha, objective = _setup(arch)
    loop = _loop_grads(critic, real, fake, alpha, objective)
    grads, losses = ENGINES[engine](critic, real, fake, alpha, objective, fake_term=False)
    full = batch_critic_losses(critic, real, fake, alpha, objective).detach()
    for i in range(B):
        critic.zero_grad(set_to_none=True)
        fake_score = fake_terms(critic(fake[i : i + 1]), objective).sum()
        fake_score.backward()
        for k, p in critic.named_parameters():
            _assert_close(grads[k][i], loop[i][k] - p.grad, f"{arch}/{engine} sample {i} {k}")
        assert float(losses[i]) == pytest.approx(float(full[i] - fake_score.detach()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("arch", ["wgan-gp", "wgan-gp-sn"])
def test_a_penalty_on_the_fakes_matches_the_loop_and_leaves_with_the_fake_term(arch: str, engine: str) -> None:
    critic, real, fake, alpha, _ = _setup(arch)
    objective = CriticObjective(gradient_penalty=True, penalty_at="fakes")
    loop = _loop_grads(critic, real, fake, alpha, objective)
    full, _ = ENGINES[engine](critic, real, fake, alpha, objective)
    private, _ = ENGINES[engine](critic, real, fake, alpha, objective, fake_term=False)
    for i in range(B):
        critic.zero_grad(set_to_none=True)
        public_fake_losses(critic, fake[i : i + 1], objective).sum().backward()
        for k, p in critic.named_parameters():
            _assert_close(full[k][i], loop[i][k], f"{arch}/{engine} sample {i} {k}")
            _assert_close(private[k][i], loop[i][k] - p.grad, f"{arch}/{engine} private part, sample {i} {k}")
    # the private part is then the real term alone: -D(x)
    critic.zero_grad(set_to_none=True)
    (-critic(real[:1]).sum()).backward()
    for k, p in critic.named_parameters():
        _assert_close(private[k][0], p.grad, f"{arch}/{engine} real term {k}")


def test_an_unknown_penalty_point_is_refused() -> None:
    from protocols.errors import BadInputError

    with pytest.raises(BadInputError, match="penalty_at"):
        CriticObjective(gradient_penalty=True, penalty_at="reals")


def _loop_grads_without_penalty(critic, real, fake, objective) -> list[dict[str, torch.Tensor]]:
    """One sample at a time, plain autograd: the adversarial terms -D(x) + D(x~) only."""
    out = []
    for i in range(real.shape[0]):
        critic.zero_grad(set_to_none=True)
        adversarial_terms(critic(real[i : i + 1]), critic(fake[i : i + 1]), objective).sum().backward()
        out.append({k: p.grad.clone() for k, p in critic.named_parameters()})
    return out


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("arch", ["wgan-gp", "wgan-gp-sn"])
def test_with_the_penalty_left_out_the_grads_equal_a_loop_without_it(arch: str, engine: str) -> None:
    # public_penalty: the fake term stays in the per-sample (clipped) loss, the penalty on the fakes leaves.
    critic, real, fake, alpha, _ = _setup(arch)
    objective = CriticObjective(gradient_penalty=True, penalty_at="fakes")
    loop = _loop_grads_without_penalty(critic, real, fake, objective)
    full_loop = _loop_grads(critic, real, fake, alpha, objective)
    grads, losses = ENGINES[engine](critic, real, fake, alpha, objective, penalty=False)
    assert set(grads) == {k for k, _ in critic.named_parameters()}
    for i in range(B):
        critic.zero_grad(set_to_none=True)
        public_fake_losses(critic, fake[i : i + 1], objective, fake_term=False).sum().backward()
        for k, p in critic.named_parameters():
            _assert_close(grads[k][i], loop[i][k], f"{arch}/{engine} sample {i} {k}")
        # and the two parts add up to the whole loss's gradient (over all parameters at once: the
        # penalty's gradient w.r.t. the biases is zero, up to rounding in the difference)
        public = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for _, p in critic.named_parameters()])
        whole_minus_private = torch.cat([(full_loop[i][k] - loop[i][k]).flatten() for k, _ in critic.named_parameters()])
        _assert_close(public, whole_minus_private, f"{arch}/{engine} public penalty, sample {i}")
    want_losses = adversarial_terms(critic(real), critic(fake), objective).detach()
    _assert_close(losses, want_losses, "losses without the penalty")
    # per patient: sums of the patients' samples, still without the penalty
    patients = torch.tensor([2, 0, 2, 1, 0, 2])
    per_unit, _ = ENGINES[engine](critic, real, fake, alpha, objective, unit_index=patients, num_units=3, penalty=False)
    for p in range(3):
        members = (patients == p).nonzero().flatten().tolist()
        for k in per_unit:
            _assert_close(per_unit[k][p], sum(loop[i][k] for i in members), f"{arch}/{engine} patient {p} {k}")


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_penalty_on_the_interpolates_cannot_be_left_out(engine: str) -> None:
    from protocols.errors import BadInputError

    critic, real, fake, alpha, objective = _setup("wgan-gp")  # penalty on the interpolates: private
    with pytest.raises(BadInputError, match="only a penalty on the fakes"):
        ENGINES[engine](critic, real, fake, alpha, objective, penalty=False)
    with pytest.raises(BadInputError, match="penalty_at='fakes'"):
        public_fake_losses(critic, fake, objective, fake_term=False)
