""":class:`~coordinator.rounds.transport.SiteTransport` on a Flower ``Grid``.

Replies are attributed by ``msg.metadata.src_node_id`` (set by the SuperLink from the
authenticated SuperNode), never by what the reply body says about itself.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from coordinator.rounds.transport import Failure
from protocols import messages as m
from protocols.errors import MessageSchemaError

log = logging.getLogger(__name__)


class GridTransport:
    """Send anonfed envelopes as Flower messages and decode the replies."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def registered_names(self) -> dict[int, str]:
        """The name each node's key was registered under (``flwr supernode register --name``)."""
        try:
            return {int(n.node_id): str(n.name) for n in self.grid.get_nodes() if getattr(n, "name", "")}
        except Exception:  # noqa: BLE001 - a grid without node info (simulation): no names to check
            return {}

    def wait_for_nodes(self, minimum: int, *, timeout_s: float) -> list[int]:
        """Node ids once at least ``minimum`` are connected (or whatever is there at the timeout)."""
        deadline = time.monotonic() + timeout_s
        nodes = self.node_ids()
        while len(nodes) < minimum and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = self.node_ids()
        return nodes

    def exchange(self, requests: Mapping[int, m.Envelope], *, round_: int, timeout_s: float) -> dict[int, m.Envelope | Failure]:
        messages = []
        for node, env in requests.items():
            messages.append(Message(
                m.to_recorddict(env), dst_node_id=int(node),
                message_type=m.FLOWER_MESSAGE_TYPE[env.message.KIND], group_id=str(round_),
            ))
        out: dict[int, m.Envelope | Failure] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout_s):
            node = int(reply.metadata.src_node_id)
            if node not in requests:
                log.warning("ignoring a reply from node %s, which was not asked", node)
                continue
            if reply.has_error():
                out[node] = Failure(node, f"Flower error {reply.error.code}: {reply.error.reason}")
                continue
            try:
                out[node] = m.from_recorddict(reply.content, expect=tuple(m.REPLIES.values()))
            except MessageSchemaError as exc:
                out[node] = Failure(node, f"reply does not match the schema: {exc}")
        for node in requests:
            out.setdefault(node, Failure(node, f"no reply within {timeout_s:g} s"))
        return out
