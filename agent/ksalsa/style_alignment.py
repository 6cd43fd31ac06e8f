"""k-SALSA local style alignment: optimise a group's W+ code from its centroid (Jeon et al. 2022).

Only the W+ code is optimised (generator and feature network frozen), for ``steps`` Adam steps
(lr 0.1, linear warm-up over the first 5 %, cosine ramp-down over the last 25 %), on

    loss = content_weight * content + style_weight * style

* content: mean over the group's members of ``1 - cosine`` between the deep features of the
  output and of the member's reconstruction ``G(w_i)``;
* style: for each member, the early-layer feature map is cut into a ``grid x grid`` array of
  patches; every source patch is matched to the most cosine-similar patch of the output and the
  squared Frobenius distance of their Gram matrices is averaged.

Members are weighted so every patient counts equally (see :mod:`agent.ksalsa.baselines`).

Substitution (documented in the benchmark report): the paper used MoCo-v2 ResNet-50 for content
and VGG19 conv1_2 for style; no installable package ships those weights, so the default is the
bundled EfficientNet-Lite0 with its deepest map for content and its first (stride-2) map for style.
A site holding VGG19 weights passes ``load_feature_extractor("vgg19", weights_path=...)`` whose
first map is relu1_2.

The published weights are kept: with unnormalised patch Grams of EfficientNet-Lite0's stride-2 map
at 64 px, two real phantom photographs differ by about 1.3e7 in style and 0.17 in content, so
``1e-6 * style`` and ``1e2 * content`` are of the same order (13 vs 17), as the paper intends.

The targets (members' reconstructions and their features) are computed once per group.

Two options that are not in the paper trade quality for less member-specific content (defaults
keep the published method):

* ``shrink`` (psi < 1): the start code is pulled toward the site-wide mean code ``w_site`` (the
  patient-weighted mean over all N >= k patients of the release), ``w' = w_site + psi * (w_group -
  w_site)``. Every output still derives from the group's >= k patients (plus the whole site's mean),
  but the features that set the group apart, and so its members, are damped. ``shrink_layers = L``
  damps only the first L (coarse) W+ entries, like StyleGAN's truncation cutoff: the layout is
  pulled toward the site's, the finer layers keep the group's own code.
* ``content_target="start"``: the content loss is measured against the start image ``G(w')``
  (the group's, possibly shrunk, centroid) instead of each member's reconstruction, so the members
  enter the optimisation only through their patch style statistics and the mean code.
* ``style_target="pooled"``: the style target of each grid position is the patient-weighted mean of
  the members' Grams at that position (no per-member patch matching), so every style target is an
  average over the group's >= k patients rather than one member's patch.
* ``style_target="site"``: the style target of each grid position is the patient-weighted mean Gram
  over ALL N >= k patients of the release (the population whose mean code is the shrink anchor
  ``w_site``), computed once per release by :func:`site_style_grams` and passed to
  :func:`align_group` like the anchor. Alignment then only pulls the texture toward site-level
  statistics: no style target belongs to the group.

Privacy argument for ``content_target="start"`` with ``style_target="site"``: the start code is
``w_site + psi * (w_group - w_site)``, the content target is its image and the style target the site
mean Gram, so each output is a deterministic function of its group's (patient-weighted) mean code
and of two site-wide averages over N >= k patients (``w_site`` and the site Grams); no member's code
or image enters the optimisation of its group in any other way (:func:`group_targets` does not even
reconstruct the members then). This is the same dependence as a (shrunk) centroid release plus two
site-wide means; it is an argument about what enters the output, not a differential-privacy bound.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from agent.inversion.invert import OptimisationSettings, learning_rate, synthesize
from agent.stylegan.generator import Generator
from protocols.errors import BadInputError

CONTENT_TARGETS = ("members", "start")  # what the content loss compares the output with
# per-member matched patch Grams (published); their mean per grid position; the whole release's mean per position
STYLE_TARGETS = ("members", "pooled", "site")


@dataclasses.dataclass(frozen=True)
class AlignmentSettings:
    """Optimisation and loss settings; defaults are the published ones."""

    steps: int = 100  # Adam steps on the W+ code
    lr: float = 0.1  # peak learning rate
    warmup: float = 0.05  # fraction of steps with linear warm-up
    rampdown: float = 0.25  # fraction of steps with cosine ramp-down to zero
    content_weight: float = 1e2  # w_c
    style_weight: float = 1e-6  # w_s (Grams are unnormalised sums over a patch, as in the paper)
    grid: int = 4  # style patches per side
    content_layer: int = -1  # index into the extractor's list of maps: deepest
    style_layer: int = 0  # earliest map
    feature_size: int | None = None  # resize images to this edge before the feature network (None: as is)
    shrink: float = 1.0  # psi: start from w_site + psi * (w_group - w_site); 1 = the published group mean
    shrink_layers: int | None = None  # shrink only the first this many (coarse) W+ entries; None: all
    content_target: str = "members"  # "members" (published) or "start": the start image's own features
    style_target: str = "members"  # "members" (published), "pooled" (members' mean Gram per grid position) or
    #                                "site" (mean Gram per position over every patient of the release)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.grid < 1:
            raise BadInputError(f"alignment settings: need steps >= 0, lr > 0, grid >= 1; got {self}")
        # psi > 1 would extrapolate away from the site mean, i.e. amplify what is member-specific.
        if not 0.0 <= self.shrink <= 1.0:
            raise BadInputError(f"alignment settings: shrink (psi) must be in [0, 1], got {self.shrink}")
        if self.shrink_layers is not None and (self.shrink_layers < 1 or self.shrink == 1.0):
            raise BadInputError(f"alignment settings: shrink_layers must be >= 1 (or None for all) and needs shrink < 1, "
                                f"got shrink_layers={self.shrink_layers}, shrink={self.shrink}")
        if self.content_target not in CONTENT_TARGETS:
            raise BadInputError(f"alignment settings: content_target must be one of {CONTENT_TARGETS}, "
                                f"got {self.content_target!r}")
        if self.style_target not in STYLE_TARGETS:
            raise BadInputError(f"alignment settings: style_target must be one of {STYLE_TARGETS}, "
                                f"got {self.style_target!r}")

    def schedule(self) -> OptimisationSettings:
        return OptimisationSettings(steps=self.steps, lr=self.lr, warmup=self.warmup, rampdown=self.rampdown)


@dataclasses.dataclass(frozen=True)
class GroupTargets:
    """Everything the loss needs from a group's members, computed once."""

    content: torch.Tensor  # (T, Dc) unit-normalised deep features of the content targets
    patch_keys: torch.Tensor | None  # (M, P, Dp) unit-normalised flattened early-layer patches (None: pooled or site style)
    grams: torch.Tensor  # (M, P, C, C) Gram matrix of each patch; (1, P, C, C) weighted mean if style is pooled or site
    weights: torch.Tensor  # (M,) member weights summing to 1 (style)
    content_weights: torch.Tensor  # (T,) content-target weights summing to 1 (T = M, or 1 for the start image)


@dataclasses.dataclass
class StepTimes:
    """Seconds spent per part of the alignment steps (totals over all steps)."""

    generator: float = 0.0  # synthesis forward + backward
    features: float = 0.0  # feature network forward + backward, and the loss
    optimiser: float = 0.0
    steps: int = 0


@dataclasses.dataclass(frozen=True)
class AlignmentResult:
    ws: torch.Tensor  # (1, num_ws, w_dim) aligned code, detached
    image: torch.Tensor  # (1, 3, R, R) its image, detached
    losses: tuple[float, ...]  # total loss before each step
    times: StepTimes


class AlignmentFeatures:
    """The content and style maps of a frozen extractor (one forward pass gives both)."""

    def __init__(self, extractor: nn.Module, settings: AlignmentSettings) -> None:
        self.extractor = extractor.eval().requires_grad_(False)
        self.settings = settings

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.settings.feature_size
        if size is not None and images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        maps = self.extractor(images)
        return maps[self.settings.content_layer], maps[self.settings.style_layer]


def _patches(style_map: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, (H/grid)*(W/grid)); H and W are cropped to a multiple of grid."""
    b, c, h, w = style_map.shape
    ph, pw = h // grid, w // grid
    if ph == 0 or pw == 0:
        raise BadInputError(f"style map {h}x{w} is smaller than the {grid}x{grid} patch grid; use feature_size")
    x = style_map[:, :, : ph * grid, : pw * grid].reshape(b, c, grid, ph, grid, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ph * pw)


def _grams_and_keys(style_map: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    p = _patches(style_map, grid)
    grams = p @ p.transpose(-1, -2)  # (B, P, C, C)
    keys = F.normalize(p.flatten(2), dim=-1)  # (B, P, C*h*w) for cosine matching
    return grams, keys


def _normalised(weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(list(weights), dtype=like.dtype, device=like.device)
    return w / w.sum()


def _weighted_mean_grams(grams: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, P, C, C) Grams and (B,) weights -> (1, P, C, C) weighted sum (the pooled style target)."""
    return (grams * w.view(-1, 1, 1, 1)).sum(dim=0, keepdim=True)


def site_style_grams(G: Generator, ws: torch.Tensor, weights: Sequence[float], features: AlignmentFeatures,
                     *, batch: int = 64) -> torch.Tensor:
    """The ``style_target="site"`` target: the weighted mean patch Gram per grid position over a release.

    ``ws`` (N, num_ws, w_dim) are the codes of every image of the release and ``weights`` their
    patient weights (normalised here). Computed once per release, in batches of ``batch`` images,
    without gradients; the result (1, P, C, C) is the same for every group.
    """
    if ws.ndim != 3 or ws.shape[0] != len(weights) or ws.shape[0] == 0:
        raise BadInputError(f"site codes: expected (N, num_ws, w_dim) for {len(weights)} images, got {tuple(ws.shape)}")
    if batch < 1:
        raise BadInputError(f"site_style_grams: batch must be >= 1, got {batch}")
    w = _normalised(weights, ws)
    total = None
    with torch.no_grad():
        for i in range(0, ws.shape[0], batch):
            grams, _ = _grams_and_keys(features(synthesize(G, ws[i:i + batch]))[1], features.settings.grid)
            part = _weighted_mean_grams(grams, w[i:i + batch])
            total = part if total is None else total + part
    return total  # type: ignore[return-value]


def group_targets(G: Generator, member_ws: torch.Tensor, weights: Sequence[float], features: AlignmentFeatures,
                  *, content_ws: torch.Tensor | None = None, site_grams: torch.Tensor | None = None) -> GroupTargets:
    """Reconstruct the members and compute their content and style targets (no gradients).

    ``content_ws`` (1, num_ws, w_dim), if given, replaces the members as the content target (the
    ``content_target="start"`` option). Style targets come from the members, except with
    ``style_target="site"``, where ``site_grams`` (from :func:`site_style_grams`) is the target;
    with both options the members are not reconstructed at all.
    """
    s = features.settings
    if member_ws.ndim != 3 or member_ws.shape[0] != len(weights):
        raise BadInputError(f"member_ws: expected (M, num_ws, w_dim) for {len(weights)} members, got {tuple(member_ws.shape)}")
    if content_ws is not None and (content_ws.ndim != 3 or content_ws.shape[0] != 1):
        raise BadInputError(f"content_ws: expected one W+ code (1, num_ws, w_dim), got {tuple(content_ws.shape)}")
    if s.style_target == "site" and site_grams is None:
        raise BadInputError("style_target='site' needs the release's mean patch Grams as site_grams "
                            "(site_style_grams; make_averages computes them)")
    if s.style_target != "site" and site_grams is not None:
        raise BadInputError(f"site_grams given but style_target is {s.style_target!r}, not 'site'")
    w = _normalised(weights, member_ws)
    keys = None
    with torch.no_grad():
        if content_ws is None or s.style_target != "site":  # the members are needed for content or style
            content, style = features(synthesize(G, member_ws))
            if s.style_target != "site":
                grams, keys = _grams_and_keys(style, s.grid)
        if content_ws is not None:
            content, style = features(synthesize(G, content_ws))
    if s.style_target == "site":
        expected = (1, s.grid * s.grid, style.shape[1], style.shape[1])
        if tuple(site_grams.shape) != expected:  # type: ignore[union-attr]
            raise BadInputError(f"site_grams: expected {expected} for this feature network and grid, "
                                f"got {tuple(site_grams.shape)}")  # type: ignore[union-attr]
        grams = site_grams.to(member_ws.device, member_ws.dtype)  # type: ignore[union-attr]
    elif s.style_target == "pooled":
        grams, keys = _weighted_mean_grams(grams, w), None
    content_w = w if content_ws is None else torch.ones(1, dtype=member_ws.dtype, device=member_ws.device)
    return GroupTargets(F.normalize(content.flatten(1), dim=-1), keys, grams, w, content_w)


def shrink_toward(group_ws: torch.Tensor, anchor: torch.Tensor, psi: float, layers: int | None = None) -> torch.Tensor:
    """``anchor + psi * (group_ws - anchor)``: psi = 1 keeps the group code, psi = 0 gives the anchor.

    With ``layers`` only the first ``layers`` W+ entries (the coarse ones) are shrunk; the rest keep
    ``group_ws``.
    """
    if not 0.0 <= psi <= 1.0:
        raise BadInputError(f"shrink (psi) must be in [0, 1], got {psi}")
    if anchor.shape[-2:] != group_ws.shape[-2:]:
        raise BadInputError(f"anchor: expected a W+ code shaped like {tuple(group_ws.shape[-2:])}, got {tuple(anchor.shape)}")
    num_ws = group_ws.shape[-2]
    if layers is not None and not 1 <= layers <= num_ws:
        raise BadInputError(f"shrink layers: expected 1..{num_ws} (the generator's W+ entries), got {layers}")
    shrunk = anchor + psi * (group_ws - anchor)
    if layers is None or layers == num_ws:
        return shrunk
    return torch.cat([shrunk[..., :layers, :], group_ws[..., layers:, :]], dim=-2)


def alignment_loss(image: torch.Tensor, targets: GroupTargets, features: AlignmentFeatures
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, content, style) for one synthetic image (1, 3, R, R)."""
    s = features.settings
    content_map, style_map = features(image)
    out = F.normalize(content_map.flatten(1), dim=-1)  # (1, Dc)
    content = ((1.0 - (targets.content * out).sum(dim=-1)) * targets.content_weights).sum()
    grams, keys = _grams_and_keys(style_map, s.grid)  # (1, P, C, C), (1, P, Dp)
    if s.style_target in ("pooled", "site"):
        # Position-aligned: each output patch against the mean Gram (members' or site's) at that position.
        style = (grams[0] - targets.grams[0]).square().sum(dim=(-1, -2)).mean()
        return s.content_weight * content + s.style_weight * style, content, style
    # Match each source patch to its most similar synthetic patch (the argmax carries no gradient).
    similarity = targets.patch_keys @ keys[0].T  # type: ignore[operator]  # (M, P_src, P_syn)
    best = similarity.argmax(dim=-1)  # (M, P_src)
    matched = grams[0][best]  # (M, P_src, C, C)
    per_member = (matched - targets.grams).square().sum(dim=(-1, -2)).mean(dim=-1)  # (M,)
    style = (per_member * targets.weights).sum()
    return s.content_weight * content + s.style_weight * style, content, style


def align_group(G: Generator, member_ws: torch.Tensor, weights: Sequence[float], features: AlignmentFeatures,
                *, start: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                site_grams: torch.Tensor | None = None) -> AlignmentResult:
    """Optimise the group's W+ code from ``start`` (default: the weighted centroid of ``member_ws``).

    With ``settings.shrink`` < 1 the start is first pulled toward ``anchor`` (the site-wide mean
    code, (1, num_ws, w_dim)); with ``settings.content_target == "start"`` the content target is the
    image of that (shrunk) start code; with ``settings.style_target == "site"`` the style target is
    ``site_grams`` (the release's mean patch Grams, :func:`site_style_grams`). With ``steps=0`` the
    result is the image of the start code.

    Runs on the device of ``member_ws`` (CUDA or CPU); generator and extractor must be there too.
    The generator is frozen for the duration and restored afterwards.

    Raises
    ------
    BadInputError
        If the codes do not fit the generator, the feature maps are too small for the grid, or
        ``shrink`` < 1 without an ``anchor``, or ``style_target="site"`` without (or with
        misshaped) ``site_grams``.
    """
    s = features.settings
    if member_ws.shape[1:] != (G.num_ws, G.cfg.w_dim):
        raise BadInputError(f"member_ws: expected (M, {G.num_ws}, {G.cfg.w_dim}), got {tuple(member_ws.shape)}")
    if s.shrink != 1.0 and anchor is None:
        raise BadInputError("shrink < 1 needs the site-wide mean W+ code as anchor (make_averages computes it)")
    if start is None:
        start = (member_ws * _normalised(weights, member_ws).view(-1, 1, 1)).sum(dim=0, keepdim=True)
    if s.shrink != 1.0:
        start = shrink_toward(start, anchor.to(start.device, start.dtype), s.shrink, s.shrink_layers)  # type: ignore[union-attr]
    grad_state = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    try:
        targets = group_targets(G, member_ws, weights, features,
                                content_ws=start if s.content_target == "start" else None, site_grams=site_grams)
        ws = start.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([ws], lr=s.lr, betas=(0.9, 0.999))
        schedule = s.schedule()
        times = StepTimes()
        losses = []
        for step in range(s.steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, schedule)
            t0 = _now(ws)
            image = synthesize(G, ws)
            t1 = _now(ws)
            # Split the backward pass at the image so generator and feature costs are timed apart;
            # the gradient is identical to one joint backward.
            image_leaf = image.detach().requires_grad_(True)
            loss, _, _ = alignment_loss(image_leaf, targets, features)
            loss.backward()
            t2 = _now(ws)
            opt.zero_grad(set_to_none=True)
            image.backward(image_leaf.grad)
            t3 = _now(ws)
            opt.step()
            t4 = _now(ws)
            times.generator += (t1 - t0) + (t3 - t2)
            times.features += t2 - t1
            times.optimiser += t4 - t3
            times.steps += 1
            losses.append(float(loss.detach()))
        with torch.no_grad():
            final = synthesize(G, ws.detach())
    finally:
        for p, flag in zip(G.parameters(), grad_state):
            p.requires_grad_(flag)
    return AlignmentResult(ws.detach(), final, tuple(losses), times)


def _now(t: torch.Tensor) -> float:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
    return time.perf_counter()
