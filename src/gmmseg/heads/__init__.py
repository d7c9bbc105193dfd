"""Dense classifiers on a feature map, and pixel anomaly scores.

`GMMClassifier` (the paper's generative head) and `LinearClassifier` (the softmax baseline) meet
one contract, `Classifier`: ``forward(features) -> output``, ``loss(output, target) -> dict``,
``update(output, target)``, ``losses_and_update``, ``anomaly_score(output)`` and the inference
maps. `GMMHeadConfig` holds the GMM head's hyperparameters, `ReleaseFixes` its fixes of the
original release.
"""

from typing import TYPE_CHECKING

from gmmseg.heads.anomaly import (
    energy_score,
    entropy_score,
    logit_anomaly_score,
    max_logit_score,
    msp_score,
)
from gmmseg.heads.base import Classifier, ClassifierOutput
from gmmseg.heads.decoders import (
    DeepLabV3PlusDecoder,
    FCNDecoder,
    SegFormerDecoder,
    UPerNetDecoder,
)
from gmmseg.heads.gmm import GMMClassifier, GMMOutput
from gmmseg.heads.gmm_config import GMMHeadConfig, ReleaseFixes
from gmmseg.heads.linear import LinearClassifier, LinearOutput
from gmmseg.heads.posthoc import (
    POSTHOC_SCORES,
    PosthocFitter,
    PosthocMixtures,
    PosthocSettings,
)

__all__ = [
    "POSTHOC_SCORES",
    "Classifier",
    "ClassifierOutput",
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "GMMClassifier",
    "GMMHeadConfig",
    "GMMOutput",
    "LinearClassifier",
    "LinearOutput",
    "PosthocFitter",
    "PosthocMixtures",
    "PosthocSettings",
    "ReleaseFixes",
    "SegFormerDecoder",
    "UPerNetDecoder",
    "energy_score",
    "entropy_score",
    "logit_anomaly_score",
    "max_logit_score",
    "msp_score",
]

if TYPE_CHECKING:  # mypy checks here that both classifiers meet the Classifier contract

    def _gmm_meets_the_contract(head: GMMClassifier) -> Classifier[GMMOutput]:
        return head

    def _linear_meets_the_contract(head: LinearClassifier) -> Classifier[LinearOutput]:
        return head
