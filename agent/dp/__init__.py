"""Differential privacy for GAN critics: exact per-unit gradients, the Gaussian mechanism through
Opacus, Poisson sampling of patients, privacy analysis, and the durable per-site accountant.

Layers are kept apart as in Opacus: mechanism (:mod:`mechanism`) knows nothing of accounting;
analysis (:mod:`accounting`) is pure functions; persistence (:mod:`durable_accountant`) only stores
the history. :mod:`agent.training.local_round` is the one place that joins them.
"""
