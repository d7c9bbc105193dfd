"""Results in the benchmarks' own formats, and scoring of saved results.

:class:`SubmissionWriter` writes what the SegmentMeIfYouCan, Fishyscapes, Cityscapes and ADE20K
servers take; :func:`score_submission` reads such files (any method's) back, matches them to a
gmmseg dataset split by name and computes the numbers of the official tools. See the
"Submit to a benchmark" page of the documentation. This package depends only on
``gmmseg.data`` and ``gmmseg.metrics``; SMIYC files need ``h5py`` (the ``benchmarks`` extra).
"""

from gmmseg.submit.scoring import (
    ScoreResult,
    read_ade20k,
    read_cityscapes,
    read_fishyscapes,
    read_smiyc,
    score_submission,
)
from gmmseg.submit.writers import (
    MANIFEST_NAME,
    SMIYC_DATASETS,
    SubmissionFormat,
    SubmissionWriter,
    cityscapes_frame_id,
)

__all__ = [
    "MANIFEST_NAME",
    "SMIYC_DATASETS",
    "ScoreResult",
    "SubmissionFormat",
    "SubmissionWriter",
    "cityscapes_frame_id",
    "read_ade20k",
    "read_cityscapes",
    "read_fishyscapes",
    "read_smiyc",
    "score_submission",
]
