"""Frozen feature networks for perceptual losses (inversion) and k-SALSA's content/style terms.

Weights come only from installed packages or from a file the site names; nothing is downloaded.
"""

from agent.features.loader import FeatureExtractor, load_feature_extractor

__all__ = ["FeatureExtractor", "load_feature_extractor"]
