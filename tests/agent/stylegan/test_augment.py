import pytest
import torch

from agent.stylegan.augment import AdaptiveAugment, augment


def _images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_zero_probability_is_identity():
    x = _images()
    assert augment(x, 0.0, generator=torch.Generator()) is x


def test_augmentation_is_differentiable_and_changes_images():
    x = _images().requires_grad_(True)
    y = augment(x, 1.0, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_augmentation_follows_the_given_generator_only():
    x = _images()
    a = augment(x, 0.5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(77)
    assert torch.equal(a, augment(x, 0.5, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment(x, 0.5, generator=torch.Generator().manual_seed(4)))


def test_augmentation_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        augment(_images(), 1.5, generator=torch.Generator())


def test_probability_rises_when_discriminator_overfits_and_falls_otherwise():
    ada = AdaptiveAugment(p=0.5, target=0.6, speed_images=100.0)
    ada.observe(torch.ones(10))  # r_t = 1 > target: D too sure about reals
    assert ada.update() == pytest.approx(1.0)
    assert ada.p == pytest.approx(0.6)
    ada.observe(-torch.ones(20))  # r_t = -1 < target
    ada.update()
    assert ada.p == pytest.approx(0.4)
    ada.observe(-torch.ones(1000))
    ada.update()
    assert ada.p == 0.0  # clamped


def test_fixed_probability_under_dp_ignores_private_statistics():
    ada = AdaptiveAugment(p=0.3, adaptive=False)
    ada.observe(torch.ones(100))
    assert ada.update() is None
    assert ada.p == 0.3


def test_adaptive_state_round_trips():
    ada = AdaptiveAugment(p=0.2)
    ada.observe(torch.tensor([1.0, -1.0, 1.0]))
    other = AdaptiveAugment()
    other.load_state_dict(ada.state_dict())
    assert other.update() == ada.update()
    assert other.p == ada.p
