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
