"""``anonfed stylegan`` end to end on a phantom site folder (train, resume, sample, train-encoder)."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from agent.stylegan import cli


def _parser():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_stylegan_commands_on_fake_site_images(tmp_path, monkeypatch):
    phantoms = pytest.importorskip("agent.phantoms.in_memory")
    from agent.stylegan.config import PRESETS, StyleGANConfig

    images = phantoms.fundus_images(4, seed=0, size=64)
    # A tiny preset and in-memory images keep this test to seconds; the real loader reads the catalog.
    monkeypatch.setitem(PRESETS, "tiny-test", StyleGANConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2,
                                                             channel_base=128, channel_max=16))
    from agent.stylegan.data import fundus_to_tensors

    monkeypatch.setattr(cli, "_site_images", lambda config, res: fundus_to_tensors(images, resolution=res))
    monkeypatch.setattr("agent.config.load_site_config", lambda path: _site(tmp_path))
    ckpt = tmp_path / "g.pt"
    args = _parser().parse_args(["stylegan", "train", "--config", "x.yaml", "--checkpoint", str(ckpt), "--steps", "2",
                                 "--preset", "tiny-test", "--batch", "4"])
    assert args.handler(args) == 0 and ckpt.exists()
    args = _parser().parse_args(["stylegan", "sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s"),
                                 "--count", "3"])
    assert args.handler(args) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 3
    args = _parser().parse_args(["stylegan", "train-encoder", "--config", "x.yaml", "--checkpoint", str(ckpt),
                                 "--encoder", str(tmp_path / "e.pt"), "--steps", "1",
                                 "--feature-weight", "0"])
    assert args.handler(args) == 0 and (tmp_path / "e.pt").exists()


def _site(tmp_path: Path):
    from agent.config import FolderSource, PrivacyPolicy, SiteConfig, StatePaths
    from protocols.tasks import PrivacyUnit, Task

    (tmp_path / "data").mkdir(exist_ok=True)
    policy = PrivacyPolicy(8.0, 1e-5, PrivacyUnit.PATIENT, 5, 3, frozenset({Task.STYLEGAN_LOCAL}))
    return SiteConfig("hospital-a", (FolderSource(tmp_path / "data"),), StatePaths(tmp_path / "state"), policy)
