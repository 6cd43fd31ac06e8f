"""``anonfed ksalsa`` as a site operator runs it: ingested PNG photographs in, a release out."""

from __future__ import annotations

import json

from protocols.cli import main
from protocols.errors import KAnonymityError


def _site(tmp_path, tiny_fundus, *, min_k: int) -> str:
    from agent.phantoms.png_writers import write_grades_csv, write_png

    data = tmp_path / "data"
    rows = []
    for i, im in enumerate(tiny_fundus):
        name = f"img{i:02d}.png"
        write_png(data / name, im.rgb)
        rows.append((name, im.grade, im.patient_key))
    write_grades_csv(data / "grades.csv", rows)
    config = tmp_path / "site.yaml"
    config.write_text(
        "site_id: hospital-k\nsources:\n  - path: data\n    fundus_grades_csv: data/grades.csv\nstate_dir: state\n"
        f"privacy:\n  max_epsilon: 4.0\n  delta: 1.0e-5\n  min_k: {min_k}\n  accepted_tasks: [ksalsa]\n"
    )
    assert main(["-q", "ingest", "--config", str(config)]) == 0
    return str(config)


def test_release_from_ingested_photographs(tmp_path, tiny_fundus, capsys) -> None:
    config = _site(tmp_path, tiny_fundus, min_k=3)
    capsys.readouterr()
    assert main(["-q", "ksalsa", "--config", config, "--k", "3", "--method", "k-same-pixel"]) == 0
    out = capsys.readouterr().out
    assert "released 3 k-same-pixel images (k=3, min_k=3, nearest groups)" in out
    manifest = json.loads(next((tmp_path / "state" / "outputs" / "ksalsa").rglob("ksalsa-release.json")).read_text())
    assert sorted(i["num_patients"] for i in manifest["images"]) == [3, 3, 4]
    assert all(i["majority_grade"] is not None for i in manifest["images"])


def test_k_below_min_k_exits_with_the_k_anonymity_code(tmp_path, tiny_fundus, capsys) -> None:
    config = _site(tmp_path, tiny_fundus, min_k=4)
    assert main(["-q", "ksalsa", "--config", config, "--k", "3", "--method", "k-same-pixel"]) == KAnonymityError.exit_code
    assert "k=3 is below the site's privacy.min_k=4" in capsys.readouterr().err
    assert not (tmp_path / "state" / "outputs" / "ksalsa").exists()
