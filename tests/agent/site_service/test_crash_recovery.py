"""A training process killed after the privacy spend is recorded, before its reply, loses no spend.

The kill happens in a real child process running the real DP-GAN engine; a fresh process then
reads the site's durable accountant (over-count allowed, never under-count).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.config import load_site_config
from agent.ingest.pipeline import run_ingest

CHILD = textwrap.dedent('''
    import os, signal, sys
    from agent.config import load_site_config
    from agent.site_service import handle_train
    from agent.site_service import handlers
    from agent.site_service.dpgan_engine import DpGanEngine
    from protocols import messages as m
    from protocols.tasks import PrivacyUnit, Task

    def die(*args, **kwargs):  # called right after the engine returned: spend recorded, reply not built
        os.kill(os.getpid(), signal.SIGKILL)

    handlers.SiteState.save_model = die
    site = load_site_config(sys.argv[1])
    ins = m.TrainInstruction(run_id="run-crash", round=1, task=Task.DPGAN, dataset_id="tof", architecture="wgan-gp",
        patch_size=32, patches_per_volume=4, local_steps=1, total_planned_steps=2, target_epsilon=8.0, delta=1e-5,
        unit=PrivacyUnit.PATIENT, expected_batch_patients=2, max_grad_norm=1.0, seed=3)
    reply = handle_train(site, m.Envelope(ins), engine=DpGanEngine())
    print("REPLY", reply.message.KIND, flush=True)  # must never be reached
''')

READER = textwrap.dedent('''
    import sys
    from agent.config import load_site_config
    from agent.site_service import handle_status
    from agent.site_service.dpgan_engine import DpGanEngine
    from agent.training.local_round import open_accountant
    from protocols import messages as m

    site = load_site_config(sys.argv[1])
    acc = open_accountant(site, "tof")
    status = handle_status(site, m.Envelope(m.StatusQuery(run_id="after-restart", dataset_id="tof")), engine=DpGanEngine())
    print(acc.total_steps, acc.epsilon(), status.message.epsilon_spent)
''')


@pytest.fixture
def site_config(phantom_consortium, tmp_path):
    root = tmp_path / "consortium"
    shutil.copytree(phantom_consortium.root, root)
    path = root / "configs" / "hospital-b.yaml"
    run_ingest(load_site_config(path), progress=False)
    return path


def test_spend_survives_a_kill_between_training_and_reply(site_config) -> None:
    env_python = sys.executable
    proc = subprocess.run([env_python, "-c", CHILD, str(site_config)], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    assert "REPLY" not in proc.stdout
    site = load_site_config(site_config)
    assert not (site.state.root / "federation" / "last_model.json").exists()  # nothing was released

    after = subprocess.run([env_python, "-c", READER, str(site_config)], capture_output=True, text=True, timeout=300,
                           env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert after.returncode == 0, after.stderr[-2000:]
    steps, epsilon, reported = after.stdout.split()
    assert int(steps) == 1  # the killed round's step is in the accountant
    assert float(epsilon) > 0.0
    assert float(reported) == pytest.approx(float(epsilon))  # and the site reports it after the restart
