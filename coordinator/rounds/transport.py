"""The seam between the round loop and Flower: send envelopes to nodes, get replies by node id.

The ServerApp implements it on a Flower ``Grid``; tests implement it by calling the site handlers
directly. Replies are keyed by the node that *sent* them (Flower's ``src_node_id``), which is how
the coordinator attributes a reported epsilon to a site.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Protocol

from protocols.messages import Envelope


@dataclasses.dataclass(frozen=True)
class Failure:
    """A node that did not return a usable reply (transport error, Flower error, bad schema)."""

    node_id: int
    reason: str


class SiteTransport(Protocol):
    """Send one request per node and collect the replies."""

    def node_ids(self) -> list[int]:
        """Nodes currently connected (authenticated SuperNodes)."""

    def exchange(self, requests: Mapping[int, Envelope], *, round_: int, timeout_s: float) -> dict[int, Envelope | Failure]:
        """Send ``requests[node]`` to each node; every node gets an entry in the result."""


def registered_names(transport: SiteTransport) -> dict[int, str]:
    """Names the nodes' keys were registered under, if the transport knows them (else empty).

    When known, a node may only act as the site it was registered as: the site id in its status
    reply is then checked against the name bound to its authenticated key.
    """
    names = getattr(transport, "registered_names", None)
    return dict(names()) if callable(names) else {}
