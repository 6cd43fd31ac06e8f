"""The Flower ServerApp: a thin adapter from a Flower Grid to :mod:`coordinator.rounds`."""
