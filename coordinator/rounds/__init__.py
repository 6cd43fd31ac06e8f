"""Federated DP-GAN rounds, independent of Flower: plan, transport seam, round loop, summary."""

from coordinator.rounds.loop import FederationResult, RoundTiming, run_federation
from coordinator.rounds.plan import FederationPlan
from coordinator.rounds.transport import Failure, SiteTransport

__all__ = ["Failure", "FederationPlan", "FederationResult", "RoundTiming", "SiteTransport", "run_federation"]
