"""The durable accountant: exact restore across processes, refusal past budget, tagged files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from agent.dp.accounting import AccountantKind, epsilon_of
from agent.dp.durable_accountant import DurableAccountant, accountant_path
from protocols.errors import AccountingError, BadInputError, BudgetExceededError
from protocols.tasks import PrivacyUnit

DELTA = 1e-5
BLOCKS = [(1.37, 0.123, 40), (0.91, 0.05, 25), (1.37, 0.123, 15)]
RESTORE_AND_STEP = """
import sys
from pathlib import Path
from agent.dp.accounting import AccountantKind
from agent.dp.durable_accountant import DurableAccountant
from protocols.tasks import PrivacyUnit
acc = DurableAccountant(Path(sys.argv[1]), kind=AccountantKind(sys.argv[2]), delta=1e-5)
acc.reserve(noise_multiplier=1.37, sample_rate=0.123, steps=15, unit=PrivacyUnit.PATIENT, max_epsilon=100.0)
print(repr(acc.epsilon()))
"""


def _reserve(acc: DurableAccountant, block, max_epsilon: float = 100.0) -> float:
    sigma, q, steps = block
    return acc.reserve(noise_multiplier=sigma, sample_rate=q, steps=steps, unit=PrivacyUnit.PATIENT, max_epsilon=max_epsilon)


def test_restored_in_a_new_process_and_stepped_equals_one_accountant(tmp_path: Path) -> None:
    kind = AccountantKind.PRV  # the agent's default; RDP restore is covered in-process below
    path = tmp_path / "acc" / "ds.json"
    first = DurableAccountant(path, kind=kind, delta=DELTA)
    for block in BLOCKS[:2]:
        _reserve(first, block)
    out = subprocess.run(
        [sys.executable, "-c", RESTORE_AND_STEP, str(path), kind.value], capture_output=True, text=True, check=True
    )
    eps_restored = float(out.stdout.strip())
    single = DurableAccountant(tmp_path / "single.json", kind=kind, delta=DELTA)
    for block in BLOCKS:
        _reserve(single, block)
    assert eps_restored == single.epsilon()
    assert DurableAccountant(path, kind=kind, delta=DELTA).history == [tuple(b) for b in BLOCKS]
    assert eps_restored == epsilon_of(BLOCKS, delta=DELTA, kind=kind)


def test_rdp_history_restores_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    acc = DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA)
    for block in BLOCKS:
        _reserve(acc, block)
    again = DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA)
    assert again.history == acc.history
    assert again.epsilon() == acc.epsilon()


def test_a_reservation_past_the_policy_is_refused_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    acc = DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA)
    _reserve(acc, (2.0, 0.1, 50), max_epsilon=3.0)
    before = path.read_bytes()
    with pytest.raises(BudgetExceededError, match="above the site policy max_epsilon=3"):
        _reserve(acc, (1.0, 0.1, 500), max_epsilon=3.0)
    assert path.read_bytes() == before
    assert DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA).epsilon() <= 3.0


def test_a_file_of_another_accountant_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    _reserve(DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA), BLOCKS[0])
    with pytest.raises(AccountingError, match="written by the 'rdp' accountant"):
        DurableAccountant(path, kind=AccountantKind.PRV, delta=DELTA)


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    _reserve(DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA), BLOCKS[0])
    doc = json.loads(path.read_text())
    doc["schema_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(AccountingError, match="schema_version 99"):
        DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA)


def test_a_corrupt_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text("{not json")
    with pytest.raises(AccountingError, match="never delete it"):
        DurableAccountant(path, kind=AccountantKind.RDP, delta=DELTA)


def test_no_temp_files_are_left_behind(tmp_path: Path) -> None:
    acc = DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA)
    for block in BLOCKS:
        _reserve(acc, block)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.json", "ds.json.lock"]


def test_two_open_accountants_never_lose_each_others_reservations(tmp_path: Path) -> None:
    a = DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA)
    b = DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA)  # opened before a reserves
    _reserve(a, BLOCKS[0])
    _reserve(b, BLOCKS[1])
    assert DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA).history == [BLOCKS[0], BLOCKS[1]]


def test_a_non_private_release_makes_epsilon_infinite_and_blocks_dp(tmp_path: Path) -> None:
    acc = DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA)
    acc.record_non_private_release(steps=10, unit=PrivacyUnit.PATIENT)
    assert math.isinf(DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA).epsilon())
    with pytest.raises(BudgetExceededError, match="WITHOUT differential privacy"):
        _reserve(acc, BLOCKS[0])


def test_dataset_ids_cannot_escape_the_accountant_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="dataset_id"):
        accountant_path(tmp_path, "../other-site")


def test_reserving_without_noise_is_refused(tmp_path: Path) -> None:
    acc = DurableAccountant(tmp_path / "ds.json", kind=AccountantKind.RDP, delta=DELTA)
    with pytest.raises(BadInputError, match="noise_multiplier"):
        _reserve(acc, (0.0, 0.1, 5))
