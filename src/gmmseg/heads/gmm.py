"""The GMMSeg dense generative classifier (see the documentation page "The algorithm").

Every class c is a mixture of M diagonal Gaussians in a D-dimensional embedding space, with unit-
length means μ_cm and standard deviations σ_cm, and uniform mixture weights. One training step is

1. ``forward``: embed the decoder features (``Dropout2d`` in training when ``dropout`` > 0,
   optional 1×1 conv + BN + ReLU, LayerNorm(D), L2 normalisation), compute every component
   log-density ℓ (one fused matrix product, float32 or wider), the class score s = max_m ℓ and
   the logits z = LayerNorm(C)(s);
2. ``loss``: cross-entropy on z upsampled to the labels (with ``upsample_before_norm``, on the
   LayerNorm(C) of the upsampled s) plus a weighted cross-entropy on ℓ (as C·M logits) towards
   the component chosen by the Sinkhorn E-step;
3. ``update``: write correctly classified embeddings to the memory and, every ``update_interval``
   steps, run the momentum M-step.

Everything is vectorised over classes and components. The hyperparameters are one
:class:`~gmmseg.heads.GMMHeadConfig`; by default it reproduces the original release's numbers,
including its quirks, and each fix of a defect is a named field of its ``fixes``
(:class:`~gmmseg.heads.ReleaseFixes`, all off by default):

* ``separate_component_ignore``: component targets get their own ignore value, so a target
  ``c·M + m == 255`` (possible when C·M > 255) is no longer ignored.
* ``count_only_filled``: the M-step counts only memory slots written so far, instead of also
  averaging the random unit vectors the memory starts with.
* ``persist_memory`` (True in the release): when False, the memory bank is left out of
  ``state_dict`` (an ADE20K bank is 150·5·32000·64 floats = 5.7 GiB).
* ``loss_average`` (``"all"`` in the release): ``"valid"`` divides the segmentation loss by the
  non-ignored pixels instead of by all pixels.

Precision: densities, class scores, logits and the M-step are computed in the wider of float32
and the dtype of the features: float32 for float32 models and under autocast (bf16/fp16
features), float64 for a ``.double()`` model. A ``.half()`` / ``.bfloat16()`` model works too
(on CPU as well): its layers run in its dtype and the head computes in float32 from the
LayerNorm(D) on; its GMM buffers (means, standard deviations, memory) are stored in its dtype.

Host-device synchronisation: with ``validate=False`` a training step reads nothing back from the
device except once per M-step (the list of classes present, whose number sizes the M-step's read
of the memory); with ``validate=True`` (the default) the value checks of features and labels
each add one. Every other step of the method is computed with sizes fixed by the input shapes.

Distributed training needs no option: embeddings, labels and assignments are all-gathered before
the memory write only when ``torch.distributed`` is initialised with more than one process, so
every rank holds identical GMM state (the original crashes without ``torch.distributed``).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmmseg._distributed import all_gather_rows, is_distributed
from gmmseg.distributions import log_prob_from_precision_cholesky
from gmmseg.em.memory import ComponentMemory
from gmmseg.em.streaming import StreamingStatistics
from gmmseg.heads._common import (
    LossAverage,
    check_features,
    check_target,
    compute_dtype,
    resize_target,
    segmentation_loss,
)
from gmmseg.heads.anomaly import LogitScore
from gmmseg.heads.gmm_config import GMMHeadConfig
from gmmseg.sinkhorn import segmented_sinkhorn

__all__ = ["GMMClassifier", "GMMOutput"]

#: Ignore value of the component targets when ``separate_component_ignore`` is on.
COMPONENT_IGNORE = -100


class GMMOutput(NamedTuple):
    """Output of :class:`GMMClassifier` (all at feature resolution).

    Attributes:
        logits: (B, C, H, W) z = LayerNorm(C)(s).
        class_log_prob: (B, C, H, W) s = max_m ℓ.
        component_log_prob: (B, C, M, H, W) ℓ.
        embeddings: (B, D, H, W) unit-length pixel embeddings.

    All four are in the head's compute dtype: float32, or float64 for float64 features.
    """

    logits: Tensor
    class_log_prob: Tensor
    component_log_prob: Tensor
    embeddings: Tensor


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _forget_host_step(module: nn.Module, incompatible_keys: object) -> None:
    if isinstance(module, GMMClassifier):
        module._host_step = None


class GMMClassifier(nn.Module):
    """GMMSeg's generative classifier: one Gaussian mixture per class over pixel embeddings.

    Args:
        num_classes: C.
        in_channels: channels of the decoder feature map.
        config: the hyperparameters (:class:`~gmmseg.heads.GMMHeadConfig`; the paper's values
            and the original release's behaviour by default).
        ignore_index: label value of void pixels.
        chunk_size: pixels per chunk of the log-density (``None``: automatic).
        align_corners: of the bilinear upsampling of the logits in the loss.
        validate: check input values: NaN/Inf features in :meth:`forward` and labels outside
            [0, C) ∪ {ignore_index} in :meth:`e_step`, :meth:`loss` and :meth:`update` (raising
            a ``ValueError`` that names them). Each check reads its result on the host, a
            device synchronisation on an accelerator. With False (a plain attribute, it can be
            switched at any time) only types and shapes are checked and a training step never
            synchronises (but once per M-step, to list the classes present), so a GPU keeps
            running ahead of Python: validate the labels where they are still on the host, e.g.
            with :meth:`check_labels` before moving them to the device. Bad labels then fail
            inside PyTorch (a CUDA device-side assert) instead of with a clear message, and
            non-finite features show up as a non-finite loss.
        generator: random generator for the initial means and memory (reproducibility).
        **options: fields of ``config`` to change, by name, as
            :meth:`GMMHeadConfig.replace <gmmseg.heads.GMMHeadConfig.replace>` takes them
            (``embed_dim=8``, ``count_only_filled=True``, ``faithful=False``, ...). A fix is
            True or False (``None``, "follow faithful" in earlier versions, is refused);
            fixes named beside ``faithful`` win over its preset.

    Attributes:
        config: the hyperparameters in use; its values are also plain attributes
            (``num_components``, ``mean_momentum``, ``count_only_filled``, ...).
        anomaly_name: ``"likelihood"``, the name of :meth:`anomaly_score` in evaluations.
        memory: the memory of the online EM (:class:`~gmmseg.em.memory.ComponentMemory` or
            :class:`~gmmseg.em.streaming.StreamingStatistics`, after ``config.memory``).

    Example:
        >>> head = GMMClassifier(3, 16, GMMHeadConfig(embed_dim=8, memory_size=32))
        >>> out = head(torch.randn(2, 16, 4, 4))
        >>> out.component_log_prob.shape
        torch.Size([2, 3, 5, 4, 4])
    """

    means: Tensor
    scales: Tensor
    step: Tensor
    anomaly_name: str | None = "likelihood"

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        config: GMMHeadConfig | None = None,
        *,
        ignore_index: int = 255,
        chunk_size: int | None = None,
        align_corners: bool = False,
        validate: bool = True,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        config = (config or GMMHeadConfig()).replace(**options)
        config.check()
        self.config = config
        fixes = config.fixes
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.embed_dim = config.embed_dim
        self.num_components = config.num_components
        self.update_interval = config.update_interval
        self.mean_momentum = config.mean_momentum
        self.scale_momentum = config.scale_momentum
        self.variance_floor = config.variance_floor
        self.sinkhorn_epsilon = config.sinkhorn_epsilon
        self.sinkhorn_iters = config.sinkhorn_iters
        self.component_loss_weight = config.component_loss_weight
        self.upsample_before_norm = config.upsample_before_norm
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size
        self.separate_component_ignore = fixes.separate_component_ignore
        self.count_only_filled = fixes.count_only_filled
        self.loss_average: LossAverage = fixes.loss_average
        self.align_corners = align_corners
        self.validate = validate

        embed_dim, num_components = config.embed_dim, config.num_components
        self.dropout = nn.Dropout2d(float(config.dropout))
        self.projection: nn.Module | None = None
        if in_channels != embed_dim:
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, embed_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(embed_dim),
                nn.ReLU(inplace=True),
            )
        self.feature_norm = nn.LayerNorm(embed_dim)
        self.logit_norm = nn.LayerNorm(num_classes)

        means = torch.empty(num_classes, num_components, embed_dim)
        nn.init.trunc_normal_(means, std=0.02, generator=generator)
        self.register_buffer("means", F.normalize(means, dim=-1))
        self.register_buffer("scales", torch.ones(num_classes, num_components, embed_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # A host copy of ``step``, so deciding whether the M-step is due needs no device read.
        # ``load_state_dict`` may change the buffer: it is then read once more.
        self._host_step: int | None = 0
        self.register_load_state_dict_post_hook(_forget_host_step)  # type: ignore[no-untyped-call]

        self.memory: ComponentMemory | StreamingStatistics
        if config.memory == "ring":
            self.memory = ComponentMemory(
                num_classes,
                num_components,
                embed_dim,
                capacity=config.memory_size,
                max_per_step=config.max_samples_per_component,
                init="random",
                count_only_filled=self.count_only_filled,
                persistent=fixes.persist_memory,
                generator=generator,
            )
        else:
            self.memory = StreamingStatistics(
                num_classes, num_components, embed_dim, decay=config.stats_decay
            )

    # ------------------------------------------------------------------ forward

    def embed(self, features: Tensor) -> Tensor:
        """Unit-length pixel embeddings (step 1 of the algorithm).

        Args:
            features: (B, in_channels, H, W) float.

        Returns:
            (B, D, H, W) embeddings with ‖e‖ = 1 at every pixel, in the wider of float32 and
            the features' dtype. In training, ``dropout`` is applied to ``features`` first.
        """
        check_features(features, self.in_channels, values=self.validate)
        x: Tensor = self.dropout(features)
        if self.projection is not None:
            x = self.projection(x)
        b, _, h, w = x.shape
        flat = self.feature_norm(rearrange(x, "b d h w -> (b h w) d"))
        flat = F.normalize(flat.to(compute_dtype(flat.dtype)), dim=-1)
        return rearrange(flat, "(b h w) d -> b d h w", b=b, h=h, w=w)

    def forward(self, features: Tensor) -> GMMOutput:
        """Component and class log-likelihoods, and logits, at every pixel.

        Args:
            features: (B, in_channels, H, W) float decoder features.

        Returns:
            :class:`GMMOutput`; the log-densities are float32 even under autocast, float64 for
            float64 features.

        Raises:
            ValueError: on a wrong channel count, or non-finite features with ``validate``.
        """
        emb = self.embed(features)
        b, _, h, w = emb.shape
        c, m, d = self.num_classes, self.num_components, self.embed_dim
        x = rearrange(emb, "b d h w -> (b h w) d")
        means = F.normalize(self.means.to(x.dtype), dim=-1).reshape(c * m, d)
        inv_scales = self.scales.to(x.dtype).reciprocal().reshape(c * m, d)
        ell = log_prob_from_precision_cholesky(
            x, means, inv_scales, "diag", chunk_size=self.chunk_size, check_finite=False
        ).view(-1, c, m)  # features were checked by embed(); LayerNorm + L2 keep them finite
        # max (not amax): its backward scatters into one component per class instead of
        # comparing all C·M entries with the maximum (identical except for exact ties).
        s = ell.max(dim=-1).values
        z = self._logit_norm(s)
        # Logits and class scores are made contiguous (B, C, H, W): they are small, and the
        # upsampling in the loss would otherwise produce a channels-last tensor to copy.
        return GMMOutput(
            logits=rearrange(z, "(b h w) c -> b c h w", b=b, h=h, w=w).contiguous(),
            class_log_prob=rearrange(s, "(b h w) c -> b c h w", b=b, h=h, w=w).contiguous(),
            component_log_prob=rearrange(ell, "(b h w) c m -> b c m h w", b=b, h=h, w=w),
            embeddings=emb,
        )

    def resized_logits(
        self, output: GMMOutput, size: tuple[int, int], align_corners: bool | None = None
    ) -> Tensor:
        """The logits bilinearly resized to ``size``, as the loss uses them.

        (:meth:`~gmmseg.segmentor.Segmentor.predict` averages resized class scores over windows,
        scales and flips first when ``upsample_before_norm`` is on, then calls
        :meth:`normalize_scores`.)

        Args:
            output: the result of :meth:`forward`.
            size: (H', W') output size.
            align_corners: of the resize (default: the classifier's ``align_corners``).

        Returns:
            (B, C, H', W'): upsampled z = LayerNorm(s), or with ``upsample_before_norm``
            LayerNorm(upsampled s), in the dtype of ``output`` (float32 or wider). Returned as
            is when ``size`` is the feature size.
        """
        corners = self.align_corners if align_corners is None else align_corners
        if not self.upsample_before_norm:
            logits = output.logits.to(compute_dtype(output.logits.dtype))
            if tuple(logits.shape[-2:]) == tuple(size):
                return logits
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=corners)
        s = output.class_log_prob.to(compute_dtype(output.class_log_prob.dtype))
        if tuple(s.shape[-2:]) != tuple(size):
            s = F.interpolate(s, size=size, mode="bilinear", align_corners=corners)
        return self.normalize_scores(s)

    def normalize_scores(self, scores: Tensor) -> Tensor:
        """The logit LayerNorm(C) of class scores at any resolution.

        Args:
            scores: (B, C, H, W) class scores s (or an average of resized ones).

        Returns:
            (B, C, H, W) logits in the wider of float32 and the scores' dtype.
        """
        s = scores.to(compute_dtype(scores.dtype))
        return self._logit_norm(s.movedim(1, -1)).movedim(-1, 1)

    def _logit_norm(self, s: Tensor) -> Tensor:
        """``logit_norm`` over the last axis of (..., C) scores, in the scores' dtype.

        The affine parameters are cast to the scores' dtype, so a float16/bfloat16 model (whose
        parameters are half) still normalises its float32 scores.
        """
        norm = self.logit_norm
        weight = None if norm.weight is None else norm.weight.to(s.dtype)
        bias = None if norm.bias is None else norm.bias.to(s.dtype)
        return F.layer_norm(s, norm.normalized_shape, weight, bias, norm.eps)

    # ------------------------------------------------------------------ E-step and losses

    def _feature_target(self, output: GMMOutput, target: Tensor) -> Tensor:
        check_target(target, self.num_classes, self.ignore_index, values=self.validate)
        if target.shape[0] != output.logits.shape[0]:
            raise ValueError(
                f"target batch size {target.shape[0]} != features batch size "
                f"{output.logits.shape[0]}"
            )
        size = (output.logits.shape[-2], output.logits.shape[-1])
        return resize_target(target, size).reshape(-1)

    def check_labels(self, target: Tensor) -> None:
        """Raise unless ``target`` is (B, H, W) integer labels in [0, C) ∪ {ignore_index}.

        Always checks the values, whatever ``validate`` says: call it once per batch where the
        labels are still on the host (no device synchronisation), e.g. before moving them.

        Raises:
            ValueError: naming the offending values and their pixel count.
        """
        check_target(target, self.num_classes, self.ignore_index)

    @torch.no_grad()
    def e_step(self, output: GMMOutput, target: Tensor) -> Tensor:
        """Sinkhorn assignment of every labelled pixel to a component of its class (step 6).

        Within each class k, the scores ℓ[pixels of k, k, :] are divided by their largest
        magnitude, then balanced by ``sinkhorn_iters`` rounds of Sinkhorn with uniform marginals
        (all classes at once); the component is the argmax of the plan.

        Args:
            output: the result of :meth:`forward`.
            target: (B, H', W') int64 labels at label resolution (resized to the features with
                nearest neighbour).

        Returns:
            (B·H·W,) int64 component index per pixel at feature resolution, in (b, h, w) order;
            -1 at ignored pixels.
        """
        gt = self._feature_target(output, target)
        ell = rearrange(output.component_log_prob.detach(), "b c m h w -> (b h w) c m")
        c = self.num_classes
        valid = gt != self.ignore_index
        # Every pixel takes part (no compaction, whose size would be read on the host): ignored
        # pixels form an extra group C, solved alongside and discarded.
        cls = torch.where(valid, gt.long(), c)
        own = cls.clamp(max=c - 1).view(-1, 1, 1).expand(-1, 1, ell.shape[-1])
        scores = ell.gather(1, own).squeeze(1)  # (N, M): each pixel's own class only
        absmax = scores.new_zeros(c + 1).scatter_reduce(0, cls, scores.abs().amax(dim=1), "amax")
        # A class whose scores are all exactly 0 would divide by 0 (NaN in the original): keep 0.
        denom = absmax[cls].unsqueeze(1)
        scores = torch.where(denom > 0, scores / denom.clamp_min(torch.finfo(scores.dtype).tiny), 0)
        # The extra group's scores are set to the largest labelled score: Sinkhorn shifts all
        # scores by their maximum, which they then leave unchanged.
        top = torch.where(valid, scores.amax(dim=1), -torch.inf).amax()
        top = torch.where(torch.isfinite(top), top, 0.0)
        scores = torch.where(valid.unsqueeze(1), scores, top)
        plan = segmented_sinkhorn(
            scores,
            cls,
            c + 1,
            self.sinkhorn_epsilon,
            self.sinkhorn_iters,
            validate=self.validate,
        )
        return torch.where(valid, plan.argmax(dim=1), -1)

    def loss(
        self, output: GMMOutput, target: Tensor, assignments: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The training losses (step 5 of the algorithm), already weighted: sum them.

        Args:
            output: the result of :meth:`forward`.
            target: (B, H', W') int64 labels with ``ignore_index`` for void.
            assignments: (B·H·W,) the result of :meth:`e_step` for this output and target, to
                share it with :meth:`update`; computed here when omitted.

        Returns:
            ``{"loss_seg": CE(resized logits, y), "loss_component": weight · CE(ℓ, c·M + m*)}``,
            the logits resized by :meth:`resized_logits`.
            ``loss_component`` averages over non-ignored pixels and is 0 when there are none.

        Raises:
            ValueError: on labels outside [0, C) ∪ {ignore_index} or mismatched shapes.
        """
        gt = self._feature_target(output, target)
        if assignments is None:
            assignments = self.e_step(output, target)
        logits = self.resized_logits(output, (target.shape[-2], target.shape[-1]))
        loss_seg = segmentation_loss(logits, target, self.ignore_index, self.loss_average)
        m = self.num_components
        valid = gt != self.ignore_index
        ignore = COMPONENT_IGNORE if self.separate_component_ignore else self.ignore_index
        comp_target = torch.where(valid, gt.long() * m + assignments.clamp_min(0), ignore)
        comp_logits = rearrange(output.component_log_prob, "b c m h w -> (b h w) (c m)")
        per_pixel = F.cross_entropy(comp_logits, comp_target, ignore_index=ignore, reduction="none")
        counted = (comp_target != ignore).sum()
        loss_component = per_pixel.sum() / counted.clamp_min(1)
        return {
            "loss_seg": loss_seg,
            "loss_component": self.component_loss_weight * loss_component,
        }

    # ------------------------------------------------------------------ memory and M-step

    @torch.no_grad()
    def update(self, output: GMMOutput, target: Tensor, assignments: Tensor | None = None) -> None:
        """Memory write (step 7) and, every ``update_interval`` steps, the M-step (step 8).

        Only pixels whose predicted class (argmax z) equals their label enter the memory (the
        others are masked, not removed, so no size depends on the data). With
        ``torch.distributed`` initialised, embeddings, labels and assignments are gathered from
        all ranks first, so every rank ends with the same state. Whether the M-step is due is
        read from a host copy of ``step`` (re-read from the buffer once after
        ``load_state_dict``); the M-step synchronises once, to list the classes present.

        Args:
            output: the result of :meth:`forward`.
            target: (B, H', W') int64 labels.
            assignments: the result of :meth:`e_step` (computed when omitted).
        """
        gt = self._feature_target(output, target)
        if assignments is None:
            assignments = self.e_step(output, target)
        emb = rearrange(output.embeddings.detach(), "b d h w -> (b h w) d")
        pred = rearrange(output.logits.detach().argmax(dim=1), "b h w -> (b h w)")
        correct = (pred == gt) & (gt != self.ignore_index)
        labels = gt.long()
        if is_distributed():
            emb = all_gather_rows(emb.contiguous())
            labels = all_gather_rows(labels)
            assignments = all_gather_rows(assignments)
            correct = all_gather_rows(correct)
        c = self.num_classes
        # (C,) bool: the classes present; the ignore label counts in an extra slot, dropped
        present = torch.zeros(c + 1, dtype=torch.bool, device=labels.device)
        present = present.index_fill(0, torch.where(labels == self.ignore_index, c, labels), True)
        present = present[:c]
        if self._host_step is None:  # after load_state_dict: one read of the step counter
            self._host_step = int(self.step)
        run_m_step = self._host_step % self.update_interval == 0
        # the M-step computes in float32 or wider (buffers of a half model are half)
        dtype = compute_dtype(self.means.dtype)
        means = F.normalize(self.means.to(dtype), dim=-1)
        scales = self.scales.to(dtype)
        # Only correct pixels are written; the others are masked, not removed (no data-dependent
        # sizes). The M-step's ``nonzero`` of ``present`` is the step's one synchronisation.
        groups = torch.where(correct, labels, 0)
        components = torch.where(correct, assignments, 0)
        # Either memory (ring bank or statistics) offers the same two calls (MixtureMemory).
        self.memory.write(emb, groups, components, correct, validate=self.validate)
        if run_m_step:
            means, scales = self.memory.m_step(
                means,
                scales,
                present,
                mean_momentum=self.mean_momentum,
                scale_momentum=self.scale_momentum,
                variance_floor=self.variance_floor,
                validate=self.validate,
            )
            self.scales.copy_(scales)
        self.means.copy_(means)
        self.step.add_(1)
        self._host_step += 1

    @torch.no_grad()
    def fit_means(
        self,
        embeddings: Tensor,
        target: Tensor,
        *,
        max_samples_per_class: int = 4000,
        max_iter: int = 30,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Data-driven start: fit each class's mixture to its embeddings by EM (not in the paper).

        Each class with at least M labelled embeddings gets a diagonal M-component mixture fitted
        by :meth:`gmmseg.em.GaussianMixture.fit_grouped` (k-means++ start, all classes at once);
        its means (re-normalised to unit length) and its standard deviations
        (√(variance + ``variance_floor``)) replace the current ones. Other classes keep theirs.
        Random-direction means need thousands of momentum updates to reach the embeddings of a
        network trained from scratch; this start removes that lag in short schedules.

        Args:
            embeddings: (B, D, H, W) embeddings (``GMMOutput.embeddings``) or (N, D) rows.
            target: (B, H', W') labels (resized to the embeddings with nearest neighbour), or
                (N,) labels of the rows; ``ignore_index`` for void.
            max_samples_per_class: at most this many embeddings per class (evenly spaced).
            max_iter: EM iterations.
            generator: randomness of the k-means++ start.

        Returns:
            (C,) bool: the classes that were fitted.

        Raises:
            ValueError: mismatched shapes or a wrong embedding width.
        """
        if embeddings.ndim == 4:
            if target.ndim != 3 or target.shape[0] != embeddings.shape[0]:
                raise ValueError(
                    f"target must be (B, H, W) with B = {embeddings.shape[0]}, got "
                    f"{tuple(target.shape)}"
                )
            check_target(target, self.num_classes, self.ignore_index)
            labels = resize_target(target, (int(embeddings.shape[-2]), int(embeddings.shape[-1])))
            labels = labels.reshape(-1)
            rows = rearrange(embeddings, "b d h w -> (b h w) d")
        elif embeddings.ndim == 2:
            if target.shape != embeddings.shape[:1]:
                raise ValueError(
                    f"target must be ({embeddings.shape[0]},) for (N, D) embeddings, got "
                    f"{tuple(target.shape)}"
                )
            labels, rows = target, embeddings
        else:
            raise ValueError(f"embeddings must be (B, D, H, W) or (N, D), got {embeddings.ndim}-d")
        if rows.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must have D = {self.embed_dim}, got {rows.shape[1]}")
        m = self.num_components
        fitted = torch.zeros(self.num_classes, dtype=torch.bool, device=self.means.device)
        keep_rows: list[Tensor] = []
        classes: list[int] = []
        for c in range(self.num_classes):
            idx = torch.nonzero(labels == c)[:, 0]
            if idx.numel() < m:
                continue
            if idx.numel() > max_samples_per_class:
                pick = torch.linspace(0, idx.numel() - 1, max_samples_per_class, device=idx.device)
                idx = idx[pick.round().long()]
            keep_rows.append(idx)
            classes.append(c)
        if not classes:
            return fitted
        sel = torch.cat(keep_rows)
        groups = torch.cat(
            [torch.full((r.numel(),), g, dtype=torch.int64) for g, r in enumerate(keep_rows)]
        )
        # the offline estimator (and the scikit-learn it may import) only when asked for
        from gmmseg.em.gaussian_mixture import ConvergenceWarning, GaussianMixture

        gm = GaussianMixture(
            n_components=m,
            covariance_type="diag",
            init_params="k-means++",
            max_iter=max_iter,
            reg_covar=1e-6,
            random_state=generator,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = gm.fit_grouped(rows[sel].float().cpu(), groups, len(classes))
        cls = torch.tensor(classes, device=self.means.device)
        means = F.normalize(fit.means_.to(self.means), dim=-1)
        scales = (fit.covariances_.to(self.scales) + self.variance_floor).sqrt()
        self.means[cls] = means
        self.scales[cls] = scales
        fitted[cls] = True
        return fitted

    # ------------------------------------------------------------------ anomaly

    def anomaly_score(self, output: GMMOutput) -> Tensor:
        """Negative best class log-likelihood, −max_c s (step 9); higher = more anomalous.

        Args:
            output: the result of :meth:`forward`.

        Returns:
            (B, H, W) scores in the dtype of ``output`` (float32 or wider).
        """
        return -output.class_log_prob.amax(dim=1)

    # ------------------------------------------------------------------ the Classifier contract

    @property
    def memory_bank(self) -> ComponentMemory | None:
        """The ring memory (``memory="ring"``), or None with ``memory="stats"``."""
        return self.memory if isinstance(self.memory, ComponentMemory) else None

    def losses_and_update(self, output: GMMOutput, target: Tensor) -> dict[str, Tensor]:
        """:meth:`loss`, then :meth:`update`, with one E-step shared by both.

        Args:
            output: the result of :meth:`forward`.
            target: (B, H', W') int64 labels with ``ignore_index`` for void.

        Returns:
            The losses of :meth:`loss`.

        Raises:
            ValueError: ``output`` is not a :class:`GMMOutput` (e.g. another head's), or as
                :meth:`loss`.
        """
        if not isinstance(output, GMMOutput):
            raise ValueError(f"output must be a GMMOutput, got {type(output).__name__}")
        assignments = self.e_step(output, target)
        losses = self.loss(output, target, assignments)
        self.update(output, target, assignments)
        return losses

    def inference_maps(self, output: GMMOutput) -> Tensor:
        """(B, C + 1, h, w): the logits, and the best class log-likelihood max_c s, stacked.

        Inference resizes and averages these maps. The likelihood score is taken at the
        feature resolution, where each pixel has a feature and max_c s is its likelihood, and
        only that one map is resized. Resizing the C class log-likelihoods first and taking
        the maximum afterwards would, between two regions, interpolate each class's
        log-density from its high value on one side to its steeply lower value on the other:
        every class boundary would look anomalous. The first C maps are z, or with
        ``upsample_before_norm`` the class scores s (normalised by :meth:`read_inference_maps`).

        Args:
            output: the result of :meth:`forward`.

        Returns:
            (B, C + 1, h, w) in the wider of float32 and the output's dtype.
        """
        scores = output.class_log_prob.to(compute_dtype(output.class_log_prob.dtype))
        if self.upsample_before_norm:
            maps = scores
        else:
            maps = output.logits.to(compute_dtype(output.logits.dtype))
        return torch.cat([maps, scores.amax(dim=1, keepdim=True)], dim=1)

    def read_inference_maps(
        self, maps: Tensor, logit_score: LogitScore = "msp"
    ) -> tuple[Tensor, Tensor]:
        """Logits and likelihood anomaly score of averaged :meth:`inference_maps`.

        Args:
            maps: (B, C + 1, H, W) resized and averaged inference maps.
            logit_score: unused: this classifier's anomaly score is its likelihood score.

        Returns:
            (B, C, H, W) logits (the LayerNorm applied here with ``upsample_before_norm``) and
            (B, H, W) anomaly score −max_c s.
        """
        c = self.num_classes
        logits = maps[:, :c]
        if self.upsample_before_norm:
            logits = self.normalize_scores(logits)
        return logits, -maps[:, c]
