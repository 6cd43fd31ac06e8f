"""``anonfed rounds run``: task defaults, plan checked before launch, keys the app bundle knows."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from protocols.cli import build_parser, main

APP_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "flower" / "app" / "pyproject.toml"


def _parse(*argv: str):
    return build_parser().parse_args(["rounds", "run", *argv])


def test_help_names_the_tasks(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["rounds", "run", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "stylegan-dp" in text and "stylegan-local is not" in text


def test_stylegan_dry_run_prints_fundus_defaults_and_the_first_instruction(tmp_path, capsys) -> None:
    assert main(["rounds", "run", "--task", "stylegan-dp", "--out", str(tmp_path / "o"), "--rounds", "4",
                 "--architecture", "tiny16", "--patch-size", "16", "--dry-run"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cfg, first = doc["run-config"], doc["round-1"]
    assert (cfg["task"], cfg["dataset-id"], cfg["num-rounds"], cfg["keys-dir"]) == ("stylegan-dp", "fundus", 4, "")
    assert (first["task"], first["architecture"], first["patch_size"]) == ("stylegan-dp", "tiny16", 16)
    assert first["total_planned_steps"] == 4 * first["local_steps"]


def test_every_run_config_key_is_known_to_the_app_bundle(tmp_path) -> None:
    from coordinator.rounds.cli import run_config_from_args

    known = set(tomllib.loads(APP_CONFIG.read_text())["tool"]["flwr"]["app"]["config"])
    argv = ["--task", "stylegan-dp", "--out", str(tmp_path), "--keys", str(tmp_path), "--rounds", "2",
            "--local-steps", "3", "--target-epsilon", "5", "--delta", "1e-6", "--unit", "patient",
            "--expected-batch-patients", "2", "--max-grad-norm", "0.5", "--consortium-budget", "9",
            "--synth-count", "0", "--min-sites", "2", "--seed", "3", "--run-id", "run-7"]
    cfg = run_config_from_args(_parse(*argv))
    assert set(cfg) <= known  # Flower drops or rejects override keys the bundle does not declare
    assert cfg["local-steps"] == 3 and cfg["run-id"] == "run-7"


def test_invalid_plan_fails_before_anything_is_sent(tmp_path, capsys) -> None:
    code = main(["rounds", "run", "--task", "stylegan-dp", "--out", str(tmp_path), "--rounds", "0"])
    assert code == 3 and "num-rounds" in capsys.readouterr().err


def test_initial_weights_go_to_the_run_config_as_an_absolute_path_and_only_for_dpgan(tmp_path, monkeypatch) -> None:
    from coordinator.rounds.cli import run_config_from_args

    known = set(tomllib.loads(APP_CONFIG.read_text())["tool"]["flwr"]["app"]["config"])
    monkeypatch.chdir(tmp_path)
    cfg = run_config_from_args(_parse("--out", "o", "--initial-weights", "public.npz"))
    assert cfg["initial-weights"] == str(tmp_path / "public.npz") and set(cfg) <= known
    assert main(["rounds", "run", "--task", "stylegan-dp", "--out", "o", "--initial-weights", "w.npz", "--dry-run"]) == 3
