"""Post-hoc mixtures on a trained :class:`~gmmseg.segmentor.Segmentor`: fit over a loader, score.

The head itself is :class:`~gmmseg.heads.PosthocMixtures` (fitted by
:class:`~gmmseg.heads.PosthocFitter`); this module feeds it a segmentor's pixel features:

* ``"decoder"``: the decoder's feature map (:meth:`Segmentor.features`), what the classifier
  sees; any segmentor has it (for a softmax model, the input of its 1×1 classifier);
* ``"embedding"``: a GMM classifier's unit-length embeddings (``GMMOutput.embeddings``), the
  space its own mixtures live in.

Features are taken at the feature resolution, as the network computes them, and each pixel is
scored there; only the score map is resized (bilinearly) to the image, as GMMSeg's own
likelihood is (a class log-density falls steeply across a class boundary, so resizing densities
first would make every boundary look anomalous). Fitting and scoring follow the inference
settings' windows: whole image, or the sliding-window crops; scoring also averages the scales
and flips, as :meth:`Segmentor.predict` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gmmseg.heads import PosthocFitter, PosthocMixtures, PosthocSettings
from gmmseg.heads.posthoc import POSTHOC_SCORES
from gmmseg.segmentor import Segmentor

if TYPE_CHECKING:
    from gmmseg.engine.evaluate import InferenceSettings

__all__ = ["FeatureSpace", "fit_posthoc", "posthoc_score_maps", "segmentor_features"]

FeatureSpace = Literal["decoder", "embedding"]


def segmentor_features(model: Segmentor, images: Tensor, space: FeatureSpace) -> Tensor:
    """Pixel features of a segmentor at the feature resolution.

    Args:
        model: the segmentor (its mode is not changed: call ``model.eval()`` first).
        images: (B, 3, H, W) float normalised images.
        space: ``"decoder"`` or ``"embedding"`` (classifiers with pixel embeddings only: a GMM
            classifier's, whose ``embed_dim`` is set).

    Returns:
        (B, F, h, w) float features.

    Raises:
        ValueError: an unknown space, or ``"embedding"`` for a classifier without embeddings.
    """
    if space == "decoder":
        return model.features(images)
    if space == "embedding":
        if model.classifier.embed_dim is None:
            raise ValueError(
                "space='embedding' needs a GMM classifier; this model's is "
                f"{type(model.classifier).__name__}: use space='decoder'"
            )
        return model.classifier.embed(model.features(images))
    raise ValueError(f"space must be 'decoder' or 'embedding', got {space!r}")


def _windows(
    h: int, w: int, settings: InferenceSettings | None
) -> Iterator[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of the whole image or of each sliding window, as ``Segmentor._slide``."""
    if settings is None or settings.mode == "whole":
        yield 0, h, 0, w
        return
    if settings.crop_size is None or settings.stride is None:
        raise ValueError("mode='slide' needs crop_size and stride")
    ch, cw = settings.crop_size
    sh, sw = settings.stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            yield max(y2 - ch, 0), y2, max(x2 - cw, 0), x2


@torch.inference_mode()
def fit_posthoc(
    model: Segmentor,
    loader: Iterable[dict[str, Any]],
    *,
    space: FeatureSpace = "decoder",
    settings: PosthocSettings | None = None,
    inference: InferenceSettings | None = None,
    device: torch.device | str = "cpu",
    max_images: int | None = None,
    ignore_index: int = 255,
    info: dict[str, Any] | None = None,
) -> PosthocMixtures:
    """Fit class-conditional mixtures to a segmentor's features of labelled images.

    Every window of the inference settings (the whole image by default; at scale 1, unflipped)
    contributes its feature pixels, each labelled by the nearest label pixel. Use the training
    split without augmentation.

    Args:
        model: the trained segmentor (set to eval mode here).
        loader: batches ``{"image": (B, 3, H, W) float, "label": (B, H', W') int64}``.
        space: which features (:func:`segmentor_features`).
        settings: the fit's settings.
        inference: the windows (``mode``, ``crop_size``, ``stride``); ``None``: whole images.
        device: where to compute.
        max_images: stop after this many images (``None``: the whole loader).
        ignore_index: void label.
        info: metadata stored with the head (``space``, ``images``, ``seconds`` and
            ``reservoir_bytes`` are added).

    Returns:
        The fitted :class:`~gmmseg.heads.PosthocMixtures` (on ``device``).

    Raises:
        ValueError: a batch without labels, or no labelled pixel.
    """
    start = time.perf_counter()
    device = torch.device(device)
    model.eval()
    fitter: PosthocFitter | None = None
    images_seen = 0
    for batch in loader:
        if max_images is not None and images_seen >= max_images:
            break
        if batch["label"] is None:
            raise ValueError(f"fitting needs labels, but the batch {batch['name']} has none")
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        if max_images is not None:
            images, labels = images[: max_images - images_seen], labels[: max_images - images_seen]
        images_seen += images.shape[0]
        h, w = images.shape[-2:]
        if tuple(labels.shape[-2:]) != (h, w):  # windows crop labels at the image's size
            labels = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0]
            labels = labels.long()
        for y1, y2, x1, x2 in _windows(h, w, inference):
            feats = segmentor_features(model, images[:, :, y1:y2, x1:x2], space)
            if fitter is None:
                fitter = PosthocFitter(
                    model.num_classes, int(feats.shape[1]), settings, ignore_index=ignore_index
                )
            fitter.update_map(feats, labels[:, y1:y2, x1:x2])
    if fitter is None:
        raise ValueError("the loader yielded no image")
    meta = {
        **(info or {}),
        "space": space,
        "images": images_seen,
        "reservoir_bytes": fitter.reservoir_bytes,
    }
    head = fitter.fit(meta)
    head.info["seconds"] = time.perf_counter() - start
    return head


@torch.inference_mode()
def posthoc_score_maps(
    model: Segmentor,
    head: PosthocMixtures,
    images: Tensor,
    inference: InferenceSettings | None = None,
    space: FeatureSpace | None = None,
) -> dict[str, Tensor]:
    """The post-hoc anomaly scores of images, at the input resolution.

    Each window's features are scored at the feature resolution; the score maps are resized
    bilinearly to the window, overlapping windows averaged, then scales and flips averaged, as
    :meth:`Segmentor.predict` averages logits.

    Args:
        model: the segmentor the head was fitted on.
        head: the fitted head.
        images: (B, 3, H, W) float.
        inference: inference settings (whole image at scale 1 by default).
        space: the feature space (default: the one stored in ``head.info``, else
            ``"decoder"``).

    Returns:
        ``{"posthoc_likelihood": (B, H, W), "posthoc_marginal": (B, H, W)}``.

    Raises:
        ValueError: features whose width differs from the head's (another model or space).
    """
    space = space or head.info.get("space", "decoder")
    b, _, h, w = images.shape
    scales = (1.0,) if inference is None else tuple(inference.scales)
    flips = (False, True) if inference is not None and inference.flip else (False,)
    align = model.align_corners
    acc: Tensor | None = None
    for scale in scales:
        img = images
        if scale != 1.0:
            size = (round(h * scale), round(w * scale))
            img = F.interpolate(images, size=size, mode="bilinear", align_corners=align)
        for flipped in flips:
            x = img.flip(-1) if flipped else img
            hh, ww = x.shape[-2:]
            total: Tensor | None = None
            count = x.new_zeros((1, 1, hh, ww))
            for y1, y2, x1, x2 in _windows(hh, ww, inference):
                feats = segmentor_features(model, x[:, :, y1:y2, x1:x2], space)
                if feats.shape[1] != head.in_channels:
                    raise ValueError(
                        f"the post-hoc mixtures were fitted on {head.in_channels}-wide features, "
                        f"this model's {space!r} features are {feats.shape[1]}-wide: fit them "
                        "on this model (gmmseg fit-posthoc)"
                    )
                scores = head.score_maps(feats)
                maps = torch.stack([scores[n] for n in POSTHOC_SCORES], dim=1)
                maps = F.interpolate(
                    maps, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=align
                )
                if total is None:
                    total = maps.new_zeros((b, len(POSTHOC_SCORES), hh, ww))
                total[:, :, y1:y2, x1:x2] += maps
                count[:, :, y1:y2, x1:x2] += 1
            assert total is not None
            maps = total / count.to(total)
            if flipped:
                maps = maps.flip(-1)
            if maps.shape[-2:] != (h, w):
                maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=align)
            acc = maps if acc is None else acc + maps
    assert acc is not None
    acc = acc / (len(scales) * len(flips))
    return {name: acc[:, i] for i, name in enumerate(POSTHOC_SCORES)}
