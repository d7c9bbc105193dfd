"""The hyperparameters of :class:`~gmmseg.heads.GMMClassifier`, defined once.

:class:`GMMHeadConfig` holds the method's numbers (the paper's by default) and
:class:`ReleaseFixes` the four options that fix defects of the original release (off by default,
reproducing it). Recipes embed the same type (:class:`gmmseg.recipes.GMMConfig` extends it with
the data-driven mean initialisation), so a value is written in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from gmmseg.heads._common import LossAverage

__all__ = ["GMMHeadConfig", "ReleaseFixes"]

_Config = TypeVar("_Config", bound="GMMHeadConfig")


def _require_bool(name: str, value: object, fix: bool = False) -> None:
    """Refuse anything but True/False: a truthy stand-in (None, 0, "no") would be taken as one."""
    if isinstance(value, bool):
        return
    why = ""
    if fix and value is None:  # the old keyword API took None for "follow faithful"
        why = " (None meant 'follow faithful' in earlier versions: pass faithful= or a bool)"
    raise ValueError(f"{name}: expected True or False, received {value!r}{why}")


@dataclass(frozen=True)
class ReleaseFixes:
    """Fixes of the original release's defects; the defaults reproduce the release.

    See the documentation page "The algorithm" for each defect and its effect.
    :meth:`all` turns every fix on (what ``faithful=False`` meant in earlier versions).

    Attributes:
        separate_component_ignore: component targets get their own ignore value, so a target
            ``c·M + m == 255`` (possible when C·M > 255) is no longer ignored.
        count_only_filled: the M-step counts only memory slots written so far, instead of also
            averaging the random unit vectors the memory starts with.
        persist_memory: keep the memory bank in ``state_dict`` and so in checkpoints (an ADE20K
            bank is 150·5·32000·64 floats = 5.7 GiB). Without it a resumed run restarts from a
            fresh memory and is not bit-identical to an uninterrupted one. The fix is ``False``.
        loss_average: ``"all"`` divides the segmentation loss by all label pixels, void
            included (the release); ``"valid"`` (the fix) by the non-void pixels.
    """

    separate_component_ignore: bool = False
    count_only_filled: bool = False
    persist_memory: bool = True
    loss_average: LossAverage = "all"

    def __post_init__(self) -> None:
        """Refuse a flag that is not a bool, naming it (``None`` meant "follow faithful").

        Raises:
            ValueError: a flag other than True or False, or an unknown ``loss_average``.
        """
        for name in ("separate_component_ignore", "count_only_filled", "persist_memory"):
            _require_bool(name, getattr(self, name), fix=True)
        if self.loss_average not in ("all", "valid"):
            raise ValueError(f"loss_average must be 'all' or 'valid', got {self.loss_average!r}")

    @classmethod
    def all(cls) -> ReleaseFixes:
        """Every fix on: own ignore, filled slots only, no bank in checkpoints, valid average."""
        return cls(
            separate_component_ignore=True,
            count_only_filled=True,
            persist_memory=False,
            loss_average="valid",
        )

    @classmethod
    def preset(cls, faithful: bool) -> ReleaseFixes:
        """``ReleaseFixes()`` if ``faithful`` else :meth:`all` (the meaning of ``faithful``)."""
        return cls() if faithful else cls.all()


@dataclass(frozen=True)
class GMMHeadConfig:
    """Hyperparameters of the GMM head (the paper's values by default).

    Attributes:
        embed_dim: D (64 in the paper). A 1×1 conv + BatchNorm + ReLU projects the features
            when ``in_channels != embed_dim``; otherwise there is no ``projection``.
        num_components: M components per class.
        memory_size: ring slots per (class, component) (``memory="ring"``).
        max_samples_per_component: at most this many embeddings per (class, component) and
            step enter the memory (evenly spaced in pixel order).
        update_interval: the M-step runs at steps 0, k, 2k, …
        mean_momentum: momentum of the means in the M-step (0.999).
        scale_momentum: momentum of the standard deviations (0: replaced at every M-step).
        variance_floor: added to the variance before the square root (0.01).
        sinkhorn_epsilon: entropic temperature of the E-step (0.05).
        sinkhorn_iters: Sinkhorn rounds of the E-step (3).
        component_loss_weight: weight of the component cross-entropy (0.01).
        upsample_before_norm: where the logit LayerNorm(C) is applied when logits are resized
            to the labels (loss) or the image (:class:`~gmmseg.segmentor.Segmentor`). False (the
            paper): z = LayerNorm(s) at the features, then z is upsampled bilinearly. True: s is
            upsampled and the LayerNorm applied at every output pixel. A LayerNorm over C scores
            bounds each pixel's logit margins, so interpolating z between two confident pixels
            leaves the network little to place a boundary between them with; interpolated s
            keeps the likelihoods' range. The anomaly score and the memory update do not change.
            In :meth:`~gmmseg.segmentor.Segmentor.predict` the class scores are what sliding
            windows, scales and flips average, and the LayerNorm is applied once to the average
            at the input resolution. (Evaluation that resizes predictions from a resized test
            image to the label size resizes the normalised logits, for every classifier.)
        memory: ``"ring"`` (the paper's ring bank, :class:`~gmmseg.em.memory.ComponentMemory`)
            or ``"stats"`` (decayed sufficient statistics,
            :class:`~gmmseg.em.streaming.StreamingStatistics`, O(C·M·D) memory).
        stats_decay: decay per step of ``memory="stats"``.
        dropout: probability of ``nn.Dropout2d`` on the incoming decoder features, before
            ``projection``, in training only (whole channels are zeroed; identity in eval mode).
            The official head applies 0.1 there (mmsegmentation's ``dropout_ratio``); the
            paper's recipes set it, the demo does not (see the docs' design decisions). It has
            no parameters: ``state_dict`` keys do not change.
        fixes: the fixes of the original release's defects (:class:`ReleaseFixes`; all off).
    """

    embed_dim: int = 64
    num_components: int = 5
    memory_size: int = 32000
    max_samples_per_component: int = 20
    update_interval: int = 5
    mean_momentum: float = 0.999
    scale_momentum: float = 0.0
    variance_floor: float = 0.01
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    component_loss_weight: float = 0.01
    upsample_before_norm: bool = False
    memory: Literal["ring", "stats"] = "ring"
    stats_decay: float = 0.999
    dropout: float = 0.0
    fixes: ReleaseFixes = field(default_factory=ReleaseFixes)

    def replace(self: _Config, **options: Any) -> _Config:
        """A copy with some fields changed, by name.

        Besides the fields of this class, ``options`` may name the fields of
        :class:`ReleaseFixes` (they change ``fixes``) and ``faithful`` (``fixes`` becomes
        :meth:`ReleaseFixes.preset`, before the individual fixes named with it apply, so a fix
        named alongside ``faithful`` wins whatever the order).

        Raises:
            TypeError: an unknown option, naming the valid ones, or both ``fixes`` and
                ``faithful`` (a whole ``fixes`` object leaves the preset nothing to do).
            ValueError: ``faithful`` or a fix flag that is not True or False.
        """
        own = {f.name for f in dataclasses.fields(self)}
        fix_names = {f.name for f in dataclasses.fields(ReleaseFixes)}
        unknown = sorted(set(options) - own - fix_names - {"faithful"})
        if unknown:
            raise TypeError(
                f"unknown GMM head option(s) {unknown}; expected one of "
                f"{sorted(own | fix_names | {'faithful'})}"
            )
        if "fixes" in options and "faithful" in options:
            raise TypeError(
                "pass fixes= or faithful=, not both: faithful is a preset of fixes "
                "(name single fixes, e.g. persist_memory=False, to change it)"
            )
        fixes = options.pop("fixes", self.fixes)
        if not isinstance(fixes, ReleaseFixes):
            raise ValueError(f"fixes must be a ReleaseFixes, got {type(fixes).__name__}")
        if "faithful" in options:
            faithful = options.pop("faithful")
            _require_bool("faithful", faithful)
            fixes = ReleaseFixes.preset(faithful)
        named = {k: options.pop(k) for k in list(options) if k in fix_names}
        fixes = dataclasses.replace(fixes, **named)
        return dataclasses.replace(self, fixes=fixes, **options)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of its range or of the wrong type.

        (:class:`ReleaseFixes` checks its own flags when it is made.)
        """
        for name in (
            "embed_dim",
            "num_components",
            "memory_size",
            "max_samples_per_component",
            "update_interval",
            "sinkhorn_iters",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.sinkhorn_epsilon > 0:
            raise ValueError(f"sinkhorn_epsilon must be > 0, got {self.sinkhorn_epsilon!r}")
        if not self.variance_floor >= 0:
            raise ValueError(f"variance_floor must be >= 0, got {self.variance_floor!r}")
        if not self.component_loss_weight >= 0:
            raise ValueError(
                f"component_loss_weight must be >= 0, got {self.component_loss_weight!r}"
            )
        d = self.dropout
        if isinstance(d, bool) or not (isinstance(d, (int, float)) and 0.0 <= d < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {d!r}")
        if self.memory not in ("ring", "stats"):
            raise ValueError(f"memory must be 'ring' or 'stats', got {self.memory!r}")
        _require_bool("upsample_before_norm", self.upsample_before_norm)
        if not isinstance(self.fixes, ReleaseFixes):
            raise ValueError(f"fixes must be a ReleaseFixes, got {type(self.fixes).__name__}")
