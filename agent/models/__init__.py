"""GAN generators and critics for image + vessel-label patches.

Imports nothing else from ``agent``: the coordinator imports this package to initialise weights.
"""

from agent.models.architectures import Architecture, GanSpec, parse_architecture
from agent.models.critics import ConvCritic
from agent.models.generators import ConvGenerator
from agent.models.weights import build_pair, initial_weights, load_arrays, pair_to_arrays, sample_pairs

__all__ = [
    "Architecture",
    "ConvCritic",
    "ConvGenerator",
    "GanSpec",
    "build_pair",
    "initial_weights",
    "load_arrays",
    "pair_to_arrays",
    "parse_architecture",
    "sample_pairs",
]
