"""Task names: the only kinds of work a coordinator may ask of a site."""

from __future__ import annotations

import enum


class Task(str, enum.Enum):
    """A task a site may accept in its policy (``privacy.accepted_tasks``)."""

    DPGAN = "dpgan"  # DP-GAN image+label pairs (Kossen et al. 2022)
    GAN_NODP = "gan-nodp"  # DCGAN / WGAN-GP / WGAN-GP-SN without DP: epsilon = infinity
    STYLEGAN_DP = "stylegan-dp"  # StyleGAN2, discriminator under DP-SGD, aggregated federatedly
    STYLEGAN_LOCAL = "stylegan-local"  # StyleGAN2 trained locally; weights never leave the site
    KSALSA = "ksalsa"  # k-SALSA synthetic averages (k-anonymity)
    SYNTHESIZE = "synthesize"  # sample synthetic outputs from an already released model


class PrivacyUnit(str, enum.Enum):
    """What one DP record is: a patient (default, all their images) or a single image/patch."""

    PATIENT = "patient"
    IMAGE = "image"
