"""GAN inversion into W+ at the site: ReStyle encoder, its training, per-image latent optimisation."""

from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
from agent.inversion.invert import OptimisationSettings, optimise_latents, refine, synthesize
from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
from agent.inversion.train import EncoderTrainer, EncoderTraining

__all__ = [
    "EncoderConfig", "EncoderTrainer", "EncoderTraining", "OptimisationSettings", "ReStyleEncoder",
    "ReconstructionLoss", "ReconstructionWeights", "optimise_latents", "refine", "synthesize",
]
