"""Evaluation metrics: closed-set segmentation, pixel and component anomaly metrics, calibration.

Definitions, edge cases and error rules: the API reference and ``docs/anomaly.md``. Every metric
is a small class holding mergeable state (``update`` → ``merge`` / ``all_reduce`` →
``compute``) over a pure functional core. This package depends on nothing else in gmmseg.
"""

from gmmseg.metrics._curve import AnomalyCurve, FPR95Rule
from gmmseg.metrics._validation import UndefinedMetricWarning
from gmmseg.metrics.anomaly import AnomalyMetrics, AnomalyMode, AnomalyResult
from gmmseg.metrics.calibration import (
    ReliabilityDiagram,
    expected_calibration_error,
    reliability_diagram,
)
from gmmseg.metrics.cityscapes import (
    CITYSCAPES_AVERAGE_INSTANCE_SIZE,
    CITYSCAPES_CATEGORIES,
    CityscapesMetrics,
    CityscapesResult,
)
from gmmseg.metrics.component import TAUS, ComponentMetrics, ComponentResult, Track
from gmmseg.metrics.segmentation import (
    SegmentationAreas,
    SegmentationMetrics,
    SegmentationResult,
    VoidPredictions,
    segmentation_compute,
    segmentation_update,
)

__all__ = [
    "CITYSCAPES_AVERAGE_INSTANCE_SIZE",
    "CITYSCAPES_CATEGORIES",
    "TAUS",
    "AnomalyCurve",
    "AnomalyMetrics",
    "AnomalyMode",
    "AnomalyResult",
    "CityscapesMetrics",
    "CityscapesResult",
    "ComponentMetrics",
    "ComponentResult",
    "FPR95Rule",
    "ReliabilityDiagram",
    "SegmentationAreas",
    "SegmentationMetrics",
    "SegmentationResult",
    "Track",
    "UndefinedMetricWarning",
    "VoidPredictions",
    "expected_calibration_error",
    "reliability_diagram",
    "segmentation_compute",
    "segmentation_update",
]
