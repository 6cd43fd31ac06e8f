import pytest
import torch
import torch.nn.functional as F

from agent.stylegan.layers import ModulatedConv2d, NoiseInjection, modulated_conv2d


def naive_modulated_conv(x, weight, styles, demodulate):
    """Independent reference: build each sample's kernel explicitly and convolve it alone."""
    outs = []
    for i in range(x.shape[0]):
        w = weight.clone()
        for c in range(weight.shape[1]):
            w[:, c] = w[:, c] * styles[i, c]
        if demodulate:
            for o in range(weight.shape[0]):
                w[o] = w[o] / torch.sqrt((w[o] ** 2).sum() + 1e-8)
        outs.append(F.conv2d(x[i : i + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel", [1, 3])
def test_modulated_conv_matches_per_sample_reference(demodulate, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, generator=g, dtype=torch.float64)
    styles = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 + 0.1
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate)
    torch.testing.assert_close(got, naive_modulated_conv(x, weight, styles, demodulate), rtol=1e-10, atol=1e-10)


def test_demodulation_makes_output_scale_independent_of_style():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 8, 8, generator=g)
    weight = torch.randn(4, 6, 3, 3, generator=g)
    styles = torch.rand(1, 6, generator=g) + 0.5
    # Scaling every style by 10 changes nothing after demodulation (only the direction matters).
    same_input = modulated_conv2d(x[:1].expand(2, -1, -1, -1), weight, torch.cat([styles, 10 * styles]), demodulate=True)
    torch.testing.assert_close(same_input[0], same_input[1], rtol=1e-5, atol=1e-5)
    plain = modulated_conv2d(x[:1].expand(2, -1, -1, -1), weight, torch.cat([styles, 10 * styles]), demodulate=False)
    torch.testing.assert_close(plain[1], 10 * plain[0], rtol=1e-5, atol=1e-5)


def test_modulated_conv_rejects_mismatched_styles():
    with pytest.raises(ValueError, match="do not agree"):
        modulated_conv2d(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3), torch.randn(2, 4), demodulate=True)


def test_upsampling_modulated_conv_doubles_resolution():
    conv = ModulatedConv2d(3, 5, 3, w_dim=7, upsample=True)
    assert conv(torch.randn(2, 3, 4, 4), torch.randn(2, 7)).shape == (2, 5, 8, 8)


def test_noise_injection_uses_only_the_given_generator():
    layer = NoiseInjection(8)
    with torch.no_grad():
        layer.strength.fill_(1.0)
    x = torch.zeros(2, 3, 8, 8)
    a = layer(x, noise_mode="random", generator=torch.Generator().manual_seed(5))
    torch.manual_seed(999)  # the global RNG must not matter
    b = layer(x, noise_mode="random", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], a[1])  # fresh noise per sample
    assert torch.equal(a[:, 0], a[:, 2])  # one noise image shared by all channels
    const = layer(x, noise_mode="const", generator=None)
    torch.testing.assert_close(const, layer(x, noise_mode="const", generator=None))
    assert torch.equal(layer(x, noise_mode="none", generator=None), x)


def test_random_noise_without_generator_is_refused():
    with pytest.raises(ValueError, match="torch.Generator"):
        NoiseInjection(4)(torch.zeros(1, 1, 4, 4), noise_mode="random", generator=None)
