"""Models trained elsewhere: whole checkpoints of other projects, read safely and converted.

The official GMMSeg release, mmsegmentation model-zoo files, Hugging Face and NVlabs SegFormer:

- :func:`read_checkpoint`: a file or Hugging Face folder → its tensors (memory-mapped where the
  file allows, ``weights_only`` with a numpy allow-list) and metadata.
- :func:`convert_checkpoint`: the tensors → gmmseg names and a description of the model
  (:class:`FileModel`), every tensor used or dropped with a reason.
- :func:`load_converted`: the conversion → a :class:`~gmmseg.segmentor.Segmentor`, strictly.

:func:`gmmseg.recipes.load_trained` chains the three for a recipe; the page "Use a model trained
elsewhere" of the documentation shows the commands.
"""

from gmmseg.interop.files import CheckpointFile, UntrustedCheckpointError, read_checkpoint
from gmmseg.interop.layouts import (
    FOREIGN_LAYOUTS,
    Conversion,
    ConversionReport,
    FileModel,
    Layout,
    convert_checkpoint,
    detect_layout,
    load_converted,
)

__all__ = [
    "FOREIGN_LAYOUTS",
    "CheckpointFile",
    "Conversion",
    "ConversionReport",
    "FileModel",
    "Layout",
    "UntrustedCheckpointError",
    "convert_checkpoint",
    "detect_layout",
    "load_converted",
    "read_checkpoint",
]
