"""An in-process transport that calls the real site handlers (with the fake engine) by node id.

Every envelope goes through the Flower record encoding both ways, as on the wire.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Mapping

import pytest

from agent.site_service import handle_ksalsa, handle_status, handle_synthesize, handle_train
from coordinator.rounds import Failure
from protocols import messages as m


def _load_fakes():
    path = Path(__file__).resolve().parents[1] / "agent" / "site_service" / "fakes.py"
    spec = importlib.util.spec_from_file_location("anonfed_test_fakes", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


fakes = _load_fakes()


class InProcessTransport:
    """node id -> (site config, engine); requests dispatched like the ClientApp does.

    ``sign_claim`` is passed to the train and synthesize handlers (e.g. the site's real ledger signer). Train
    requests (instruction and arrays) and train replies are kept by (round, node) for tests that check aggregation.
    """

    def __init__(self, nodes: Mapping[int, tuple[object, object]], *, sign_claim=None) -> None:
        self.nodes = dict(nodes)
        self.sign_claim = sign_claim
        self.sent: list[tuple[int, str, int]] = []
        self.ksalsa_task = None  # a fake k-SALSA release function, when a test needs one
        self.train_requests: dict[tuple[int, int], dict] = {}
        self.train_instructions: dict[tuple[int, int], m.TrainInstruction] = {}
        self.train_replies: dict[tuple[int, int], m.Envelope] = {}

    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def exchange(self, requests, *, round_, timeout_s):
        out = {}
        for node, env in requests.items():
            site, engine = self.nodes[node]
            wire = m.from_recorddict(m.to_recorddict(env), expect=tuple(m.REQUESTS.values()))
            self.sent.append((node, wire.message.KIND, round_))
            if isinstance(wire.message, m.TrainInstruction):
                self.train_requests[(round_, node)] = dict(wire.arrays)
                self.train_instructions[(round_, node)] = wire.message
                reply = handle_train(site, wire, engine=engine, sign_claim=self.sign_claim)
            elif isinstance(wire.message, m.SynthesizeQuery):
                reply = handle_synthesize(site, wire, engine=engine, sign_claim=self.sign_claim)
            elif isinstance(wire.message, m.KsalsaQuery):
                reply = handle_ksalsa(site, wire, run_task=self.ksalsa_task)
            elif isinstance(wire.message, m.StatusQuery):
                reply = handle_status(site, wire, engine=engine)
            else:
                out[node] = Failure(node, "unknown request")
                continue
            out[node] = m.from_recorddict(m.to_recorddict(reply), expect=tuple(m.REPLIES.values()))
            if isinstance(out[node].message, m.TrainReply):
                self.train_replies[(round_, node)] = out[node]
        return out


@pytest.fixture
def transport_for():
    """The :class:`InProcessTransport` class, for tests that build their own nodes."""
    return InProcessTransport


@pytest.fixture
def consortium(tmp_path: Path):
    """Three fake sites; hospital-c has a small budget (fits one round of 1.5)."""

    def build(budgets=(6.0, 6.0, 2.0), eps=(1.5, 1.5, 1.5), patients=(3, 4, 5)):
        nodes = {}
        for i, (cap, cost, n) in enumerate(zip(budgets, eps, patients)):
            root = tmp_path / f"site{i}"
            root.mkdir()
            site = dataclasses.replace(fakes.make_site(root, max_epsilon=cap), site_id=f"hospital-{'abc'[i]}")
            nodes[1000 + i] = (site, fakes.FakeEngine(eps_per_round=cost, patients=n))
        return InProcessTransport(nodes)

    return build
