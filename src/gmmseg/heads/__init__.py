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

__all__ = [
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "GMMClassifier",
    "GMMOutput",
    "LinearClassifier",
    "LinearOutput",
    "SegFormerDecoder",
    "UPerNetDecoder",
    "energy_score",
    "entropy_score",
    "logit_anomaly_score",
    "max_logit_score",
    "msp_score",
]
