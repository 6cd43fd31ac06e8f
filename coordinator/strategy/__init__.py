"""Aggregation of site updates (FedAvg over generator and critic weights, weighted by patients)."""

from coordinator.strategy.fedavg import fedavg

__all__ = ["fedavg"]
