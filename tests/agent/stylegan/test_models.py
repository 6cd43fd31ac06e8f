import pytest
import torch

from agent.stylegan.config import StyleGANConfig, preset
from agent.stylegan.discriminator import Discriminator, minibatch_stddev
from agent.stylegan.ema import ema_beta, update_ema
from agent.stylegan.generator import Generator
from protocols.errors import ConfigError


def test_generator_and_discriminator_at_64px_on_cpu():
    cfg = preset("small64")
    assert cfg.resolution == 64 and cfg.num_ws == 10
    g = torch.Generator().manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    z = G.sample_z(4, generator=g)
    images = G(z, noise_mode="random", generator=g)
    assert images.shape == (4, 3, 64, 64)
    assert torch.isfinite(images).all()
    logits = D(images)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


def test_generator_is_mapping_then_synthesis(tiny_arch):
    G = Generator(tiny_arch)
    z = G.sample_z(3, generator=torch.Generator().manual_seed(1))
    w = G.mapping(z)
    assert w.shape == (3, tiny_arch.w_dim)
    ws = G.broadcast(w)
    assert ws.shape == (3, tiny_arch.num_ws, tiny_arch.w_dim)
    torch.testing.assert_close(G(z), G.synthesis(ws))


def test_same_seed_same_images_regardless_of_global_rng(tiny_arch):
    G = Generator(tiny_arch)

    def sample():
        g = torch.Generator().manual_seed(7)
        return G(G.sample_z(2, generator=g), noise_mode="random", generator=g)

    a = sample()
    torch.manual_seed(12345)
    assert torch.equal(a, sample())


def test_truncation_pulls_w_towards_average(tiny_arch):
    G = Generator(tiny_arch)
    z = torch.randn(5, tiny_arch.z_dim, generator=torch.Generator().manual_seed(2))
    G.mapping(z, update_w_avg=True)  # moves w_avg off zero
    w_avg = G.mapping.w_avg.clone()
    assert w_avg.abs().sum() > 0
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), w_avg.expand(5, -1))
    w1, w_half = G.mapping(z), G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(w_half, w_avg + 0.5 * (w1 - w_avg))
    torch.testing.assert_close(G.mean_ws(2), w_avg.expand(2, tiny_arch.num_ws, -1))


def test_w_avg_tracks_mean_with_beta(tiny_arch):
    G = Generator(tiny_arch)
    z = torch.randn(8, tiny_arch.z_dim, generator=torch.Generator().manual_seed(3))
    w = G.mapping(z, update_w_avg=True)
    torch.testing.assert_close(G.mapping.w_avg, (1 - tiny_arch.w_avg_beta) * w.detach().mean(0))


def test_shapes_are_checked_at_inputs(tiny_arch):
    G, D = Generator(tiny_arch), Discriminator(tiny_arch)
    with pytest.raises(ValueError, match="expected z of shape"):
        G(torch.randn(2, tiny_arch.z_dim + 1))
    with pytest.raises(ValueError, match="expected ws"):
        G.synthesis(torch.randn(2, tiny_arch.num_ws - 1, tiny_arch.w_dim))
    with pytest.raises(ValueError, match="expected images"):
        D(torch.randn(2, 3, 32, 32))


def test_invalid_resolution_is_a_config_error():
    with pytest.raises(ConfigError, match="power of two"):
        StyleGANConfig(resolution=48)
    with pytest.raises(ConfigError, match="unknown"):
        preset("huge")


def test_discriminator_without_mbstd_scores_each_image_alone(tiny_arch):
    D = Discriminator(tiny_arch)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(D(x)[1:2], D(x[1:2]))


def test_minibatch_stddev_mixes_samples_and_checks_group():
    x = torch.randn(4, 2, 4, 4)
    y = minibatch_stddev(x, 2)
    assert y.shape == (4, 3, 4, 4)
    x2 = x.clone()
    x2[2] += 5.0  # changing sample 2 changes the statistic seen by its group partner (sample 0)
    assert not torch.equal(minibatch_stddev(x2, 2)[0, 2], y[0, 2])
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(torch.randn(3, 2, 4, 4), 2)


def test_gpu_presets_are_paper_sized():
    assert preset("cuda256").num_ws == 14 and preset("cuda512").num_ws == 16
    assert preset("cuda512").channels(512) == 64 and preset("cuda512").channels(8) == 512


def test_ema_update(tiny_arch):
    G, G_ema = Generator(tiny_arch), Generator(tiny_arch)
    before = [p.clone() for p in G_ema.parameters()]
    update_ema(G_ema, G, beta=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, G_ema.parameters()))
    update_ema(G_ema, G, beta=0.25)
    for old, new, cur in zip(before, G_ema.parameters(), G.parameters()):
        torch.testing.assert_close(new, 0.25 * old + 0.75 * cur)
    assert ema_beta(batch_size=10, half_life_images=10) == pytest.approx(0.5)
    assert ema_beta(batch_size=5, half_life_images=10) == pytest.approx(0.5**0.5)

