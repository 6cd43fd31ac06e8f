import socket

import pytest
import torch

from agent.features.efficientnet_lite import bundled_weights_path
from agent.features.loader import feature_distance, load_feature_extractor
from agent.features.vgg import VGG19Features, _vgg19_features
from protocols.errors import BadInputError, ConfigError


@pytest.fixture(scope="module")
def efficientnet():
    return load_feature_extractor()


def test_bundled_weights_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("feature extractor tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    net = load_feature_extractor("efficientnet-lite0")
    assert "site-packages" in str(bundled_weights_path())
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_efficientnet_features_are_multiscale(efficientnet):
    maps = efficientnet(torch.zeros(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 320]
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]


def test_pretrained_features_tell_similar_from_different_images(efficientnet):
    import skimage.data

    def load(img):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        return torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True)

    cat, coffee = load(skimage.data.chelsea()), load(skimage.data.coffee())
    noisy = cat + 0.05 * torch.randn(cat.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert feature_distance(efficientnet, cat, cat).item() == pytest.approx(0.0, abs=1e-6)
        assert feature_distance(efficientnet, cat, noisy) < feature_distance(efficientnet, cat, coffee)


def test_training_mode_cannot_unfreeze_batchnorm(efficientnet):
    efficientnet.train()
    assert not efficientnet.training


def test_unknown_network_and_missing_vgg_weights_are_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        load_feature_extractor("resnet-moco")
    with pytest.raises(ConfigError, match="needs weights_path"):
        load_feature_extractor("vgg19")


def test_vgg19_from_a_site_weights_file(tmp_path):
    state = {f"features.{k}": v for k, v in _vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(state, tmp_path / "vgg19.pth")
    net = load_feature_extractor("vgg19", weights_path=tmp_path / "vgg19.pth")
    assert isinstance(net, VGG19Features)
    assert [m.shape[1] for m in net(torch.zeros(1, 3, 32, 32))] == [64, 128, 256, 512]


def test_vgg19_weights_with_wrong_layout_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BadInputError, match=r"lack features\.0\.bias \(and 23 more\)"):
        load_feature_extractor("vgg19", weights_path=tmp_path / "bad.pth")


def test_vgg19_weights_with_pickled_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(BadInputError, match="plain state dict"):
        load_feature_extractor("vgg19", weights_path=tmp_path / "evil.pth")
