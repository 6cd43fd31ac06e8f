"""Clipping bounds each patient's contribution; the noise has the configured scale."""

from __future__ import annotations

import math

import pytest
import torch

from agent.dp.mechanism import assign_unit_grads, make_dp_optimizer, private_step
from protocols.errors import BadInputError


class TwoParams(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(40, 50))
        self.b = torch.nn.Parameter(torch.zeros(7))


def _dp(model: torch.nn.Module, *, sigma: float, c: float, expected: float, seed: int = 0):
    return make_dp_optimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=c,
        expected_units=expected,
        generator=torch.Generator().manual_seed(seed),
    )


def test_each_patients_clipped_contribution_has_norm_at_most_c() -> None:
    model = TwoParams()
    c = 0.7
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 0.5, 3.0, 100.0, 1e4])  # some below, some far above C
    grads = {
        "a": torch.randn(5, 40, 50, generator=g) * scales.view(-1, 1, 1),
        "b": torch.randn(5, 7, generator=g) * scales.view(-1, 1),
    }
    for u in range(5):  # one patient at a time: what it adds to the summed gradient
        opt = _dp(model, sigma=0.0, c=c, expected=1)
        opt.zero_grad(set_to_none=True)
        assign_unit_grads(model, {k: v[u : u + 1] for k, v in grads.items()})
        opt.clip_and_accumulate()
        contrib = torch.cat([model.a.summed_grad.flatten(), model.b.summed_grad.flatten()])
        raw = torch.cat([grads["a"][u].flatten(), grads["b"][u].flatten()])
        assert float(contrib.norm()) <= c * (1 + 1e-6)
        if float(raw.norm()) <= c:  # small gradients pass unchanged
            torch.testing.assert_close(contrib, raw)
        else:  # large ones keep their direction
            assert float(torch.nn.functional.cosine_similarity(contrib, raw, dim=0)) == pytest.approx(1.0, abs=1e-6)


def test_noise_on_a_zero_gradient_step_has_std_sigma_c_over_expected_units() -> None:
    model = TwoParams()
    sigma, c, expected = 1.3, 0.8, 4.0
    opt = _dp(model, sigma=sigma, c=c, expected=expected, seed=5)
    zeros = {k: torch.zeros(3, *p.shape) for k, p in model.named_parameters()}
    before = model.a.detach().clone()
    private_step(opt, model, zeros)
    update = (before - model.a.detach()).flatten()  # SGD lr 1: the update is the noised mean gradient
    want = sigma * c / expected
    n = update.numel()
    # std estimate of n Gaussian draws has relative SE 1/sqrt(2n); allow 5 SE.
    assert float(update.std()) == pytest.approx(want, rel=5 / math.sqrt(2 * n))
    assert abs(float(update.mean())) < 5 * want / math.sqrt(n)


def test_empty_poisson_batch_still_adds_noise() -> None:
    model = TwoParams()
    opt = _dp(model, sigma=1.0, c=1.0, expected=2.0)
    private_step(opt, model, {k: torch.zeros(0, *p.shape) for k, p in model.named_parameters()})
    assert float(model.a.detach().abs().sum()) > 0


def test_a_parameter_without_per_unit_gradient_is_refused() -> None:
    model = TwoParams()
    with pytest.raises(BadInputError, match="no per-unit gradient for parameter b"):
        assign_unit_grads(model, {"a": torch.zeros(2, 40, 50)})


def test_wrongly_shaped_per_unit_gradient_is_refused() -> None:
    model = TwoParams()
    with pytest.raises(BadInputError, match="per-unit gradient of a"):
        assign_unit_grads(model, {"a": torch.zeros(2, 50, 40), "b": torch.zeros(2, 7)})


def test_invalid_mechanism_parameters_are_refused() -> None:
    with pytest.raises(BadInputError, match="max_grad_norm > 0"):
        _dp(TwoParams(), sigma=1.0, c=0.0, expected=1.0)


def test_public_gradients_are_added_after_clipping_and_averaging_unchanged() -> None:
    model = TwoParams()
    c, expected = 0.5, 4.0
    opt = _dp(model, sigma=0.0, c=c, expected=expected)
    unit = {"a": torch.full((1, 40, 50), 10.0), "b": torch.full((1, 7), 10.0)}  # one unit, far above C
    public = {"b": torch.full((7,), 3.0)}  # large: it must pass unclipped
    private_step(opt, model, unit, public)
    norm = math.sqrt(10.0**2 * (40 * 50 + 7))
    clipped_b = 10.0 * c / norm / expected
    torch.testing.assert_close(model.b.detach(), torch.full((7,), -(clipped_b + 3.0)))  # SGD lr 1 from zero
    torch.testing.assert_close(model.a.detach(), torch.full((40, 50), -10.0 * c / norm / expected))


def test_a_public_gradient_for_an_unknown_parameter_is_refused() -> None:
    model = TwoParams()
    with pytest.raises(BadInputError, match="not a parameter"):
        private_step(_dp(model, sigma=0.0, c=1.0, expected=1.0), model,
                     {k: torch.zeros(1, *p.shape) for k, p in model.named_parameters()}, {"c": torch.zeros(3)})
