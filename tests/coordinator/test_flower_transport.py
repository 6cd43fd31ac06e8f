"""GridTransport: replies attributed by the sending node; errors and bad schemas become failures."""

from __future__ import annotations

import pytest

from flwr.app import ConfigRecord, Error, Message, RecordDict

from coordinator.flower_server.transport import GridTransport
from coordinator.rounds import Failure
from protocols import messages as m
from protocols.tasks import PrivacyUnit



@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs the identity of the running task to build messages outside its runtime."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)

def _status(site: str) -> m.Envelope:
    return m.Envelope(m.StatusReply(site_id=site, accepted_tasks=("dpgan",), max_epsilon=8.0, delta=1e-5,
                                    unit=PrivacyUnit.PATIENT, min_patients=3, min_k=5, ksalsa_groups="nearest", epsilon_spent=0.0, num_patients=3,
                                    agent_version="t"))


class FakeGrid:
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sent: list[Message] = []

    def get_node_ids(self):
        return [7, 8, 9]

    def get_nodes(self):
        from flwr.proto.node_pb2 import NodeInfo

        return [NodeInfo(node_id=7, name="site-7"), NodeInfo(node_id=8, name="site-8"), NodeInfo(node_id=9)]

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            self.sent.append(msg)
            action = self.behaviour.get(msg.metadata.dst_node_id)
            if action == "ok":
                out.append(Message(m.to_recorddict(_status(f"site-{msg.metadata.dst_node_id}")), reply_to=msg))
            elif action == "error":
                out.append(Message(Error(code=3, reason="ClientApp crashed"), reply_to=msg))
            elif action == "garbage":
                out.append(Message(RecordDict({"raw": ConfigRecord({"x": 1})}), reply_to=msg))
        return out


def test_replies_are_keyed_by_sender_and_failures_are_explicit() -> None:
    grid = FakeGrid({7: "ok", 8: "error", 9: "garbage"})
    t = GridTransport(grid)  # type: ignore[arg-type]
    query = m.Envelope(m.StatusQuery(run_id="run-1", dataset_id="tof"))
    out = t.exchange({7: query, 8: query, 9: query, 10: query}, round_=0, timeout_s=5)
    assert isinstance(out[7], m.Envelope) and out[7].message.site_id == "site-7"
    assert isinstance(out[8], Failure) and "ClientApp crashed" in out[8].reason
    assert isinstance(out[9], Failure) and "schema" in out[9].reason
    assert isinstance(out[10], Failure) and "no reply" in out[10].reason
    assert {msg.metadata.message_type for msg in grid.sent} == {"query.status"}
    assert t.wait_for_nodes(3, timeout_s=1) == [7, 8, 9]
    assert t.registered_names() == {7: "site-7", 8: "site-8"}
