"""The ClientApp adapter: finds its site from node or run config, refuses malformed messages."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from agent.flower_client.app import app, site_config_for
from protocols import messages as m
from protocols.errors import ConfigError



@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs the identity of the running task to build messages outside its runtime."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)

def _context(node_config, run_config=None) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def test_site_from_node_config_or_simulation_partition(phantom_consortium) -> None:
    cfg = phantom_consortium.root / "configs" / "hospital-b.yaml"
    assert site_config_for(_context({"site-config": str(cfg)})).site_id == "hospital-b"
    sim = _context({"partition-id": 2, "num-partitions": 3}, {"simulation-configs": str(cfg.parent)})
    assert site_config_for(sim).site_id == "hospital-c"
    with pytest.raises(ConfigError, match="node 5 has no site config"):
        site_config_for(_context({"partition-id": 5}, {"simulation-configs": str(cfg.parent)}))
    with pytest.raises(ConfigError, match="no site config"):
        site_config_for(_context({}))


def test_malformed_request_gets_a_structured_refusal(phantom_consortium) -> None:
    cfg = phantom_consortium.root / "configs" / "hospital-a.yaml"
    request = Message(RecordDict({"pixels": ConfigRecord({"x": 1})}), dst_node_id=5, message_type="query.status")
    reply = app(request, _context({"site-config": str(cfg)}))
    env = m.from_recorddict(reply.content)
    assert isinstance(env.message, m.Refusal) and env.message.code == "bad-message"
    assert env.message.site_id == "hospital-a" and not env.arrays
