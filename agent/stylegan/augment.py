"""Differentiable augmentation for small datasets, with ADA's adaptive probability.

Every transform is applied to each image independently with probability ``p`` and is
differentiable with respect to the pixels, so the generator learns through it (Karras et al. 2020,
"Training GANs with limited data"). Geometric transforms (x-flip, translation, isotropic scale,
rotation) are fused into one ``grid_sample`` with reflection padding; colour transforms
(brightness, contrast, saturation) follow. All randomness comes from the caller's generator.

Privacy note: ADA adapts ``p`` from E[sign(D(real))], a statistic of the private images. Under
``federated-dp`` that statistic is not covered by the DP accounting, so ``p`` stays fixed there
(:class:`AdaptiveAugment` with ``adaptive=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, p: float, *, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a batch (B, C, H, W) in [-1, 1]; each transform fires with probability p.

    Raises
    ------
    ValueError
        If ``images`` is not 4-D or ``p`` is outside [0, 1].
    """
    if images.ndim != 4:
        raise ValueError(f"augment: expected (B, C, H, W), got {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment: probability must be in [0, 1], got {p}")
    if p == 0.0:
        return images
    b, dev = images.shape[0], images.device

    def draw(shape: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.rand((b, *shape), generator=generator, device=dev)

    def fires() -> torch.Tensor:
        return (draw() < p).to(images.dtype)

    def normal(std: float) -> torch.Tensor:
        return torch.randn(b, generator=generator, device=dev) * std

    # Geometric part as one affine map in normalised coordinates ([-1, 1]).
    flip = 1.0 - 2.0 * fires() * (draw() < 0.5).to(images.dtype)  # -1 flips x
    shift = fires().unsqueeze(1) * (draw((2,)) * 0.25 - 0.125) * 2.0  # up to 1/8 of the image
    scale = torch.exp2(fires() * normal(0.2))
    angle = fires() * (draw() * 2.0 - 1.0) * math.pi
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
        torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
    ], dim=1)  # (B, 2, 3): output coordinate -> input coordinate
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Colour part (ADA's "color" pipeline without hue rotation).
    x = x + (fires() * normal(0.2)).view(b, 1, 1, 1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * torch.exp2(fires() * normal(0.5)).view(b, 1, 1, 1) + mean  # contrast
    if x.shape[1] == 3:
        luma = x.mean(dim=1, keepdim=True)
        x = (x - luma) * torch.exp2(fires() * normal(1.0)).view(b, 1, 1, 1) + luma  # saturation
    return x


class AdaptiveAugment:
    """Augmentation probability that tracks overfitting of the discriminator (ADA heuristic r_t).

    r_t = E[sign(D(real))]: near 1 means D separates reals too confidently (overfitting), so p rises
    when r_t > target and falls otherwise, by ``batch * interval / speed_images`` per update.
    """

    def __init__(self, *, p: float = 0.0, target: float = 0.6, speed_images: float = 10_000.0,
                 adaptive: bool = True) -> None:
        self.p = float(p)
        self.target = target  # desired r_t (ADA: 0.6)
        self.speed_images = speed_images  # images over which p can move by 1 (ADA: 500k)
        self.adaptive = adaptive  # False under federated-dp (r_t would leak private data)
        self._sign_sum = 0.0
        self._count = 0

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate the signs of D's logits on (augmented) real images."""
        if self.adaptive:
            self._sign_sum += float(torch.sign(real_logits.detach()).sum())
            self._count += real_logits.numel()

    def update(self) -> float | None:
        """Move p by one step from the accumulated r_t; return r_t (None if nothing observed)."""
        if not self.adaptive or self._count == 0:
            return None
        r_t = self._sign_sum / self._count
        step = math.copysign(self._count / self.speed_images, r_t - self.target)
        self.p = min(max(self.p + step, 0.0), 1.0)
        self._sign_sum, self._count = 0.0, 0
        return r_t

    def state_dict(self) -> dict[str, float | int | bool]:
        return {"p": self.p, "sign_sum": self._sign_sum, "count": self._count, "adaptive": self.adaptive}

    def load_state_dict(self, state: dict[str, float | int | bool]) -> None:
        self.p = float(state["p"])
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self.adaptive = bool(state["adaptive"])
