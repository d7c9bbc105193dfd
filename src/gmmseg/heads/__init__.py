"""Dense classifiers on a feature map, and pixel anomaly scores.

`GMMClassifier` (the paper's generative head) and `LinearClassifier` (the softmax baseline) share
one surface: ``forward(features) -> output``, ``loss(output, target) -> dict``,
``update(output, target)`` and ``anomaly_score(output)``.
"""

from gmmseg.heads.anomaly import (
    energy_score,
    entropy_score,
    logit_anomaly_score,
    max_logit_score,
    msp_score,
)
from gmmseg.heads.decoders import (
    DeepLabV3PlusDecoder,
    FCNDecoder,
    SegFormerDecoder,
    UPerNetDecoder,
)
from gmmseg.heads.gmm import GMMClassifier, GMMOutput
from gmmseg.heads.linear import LinearClassifier, LinearOutput
from gmmseg.heads.posthoc import (
    POSTHOC_SCORES,
    PosthocFitter,
    PosthocMixtures,
    PosthocSettings,
)

__all__ = [
    "POSTHOC_SCORES",
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "GMMClassifier",
    "GMMOutput",
    "LinearClassifier",
    "LinearOutput",
    "PosthocFitter",
    "PosthocMixtures",
    "PosthocSettings",
    "SegFormerDecoder",
    "UPerNetDecoder",
    "energy_score",
    "entropy_score",
    "logit_anomaly_score",
    "max_logit_score",
    "msp_score",
]
