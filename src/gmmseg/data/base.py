"""The common machinery of every loader: frame lists, decoding, validation, the sample contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypedDict

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from gmmseg.data._io import check_same_size, check_values, read_image, read_label
from gmmseg.data.meta import IGNORE_INDEX

__all__ = ["Frame", "Sample", "SegmentationDataset", "Transform"]


class Sample(TypedDict):
    """One item of every gmmseg dataset.

    Attributes:
        image: (3, H, W) uint8 RGB (float32 after `Normalize`);
            loaders return a channels-last view of the decoded (H, W, 3) array (no copy).
        label: (H, W) int64 train ids with ignore 255 (closed-set datasets), or the canonical
            anomaly label 0 normal / 1 anomaly / 255 void (anomaly datasets); ``None`` for
            unlabelled splits (e.g. SMIYC test).
        name: Frame id, e.g. ``"frankfurt_000000_000294"``.
        image_path: Path of the image file.
        label_path: Path of the label file (``""`` for unlabelled splits).
        ori_size: (H, W) of the stored image.
    """

    image: Tensor
    label: Tensor | None
    name: str
    image_path: str
    label_path: str
    ori_size: tuple[int, int]


#: A transform maps a sample to a sample (see `transforms`).
Transform = Callable[[Sample], Sample]
#: A transform that draws its randomness from a generator (every `transforms.JointTransform`).
SeededTransform = Callable[[Sample, torch.Generator | None], Sample]


@dataclass(frozen=True)
class Frame:
    """One frame of a dataset: its id and files.

    Attributes:
        name: Frame id.
        image_path: The stored image.
        label_path: The label file, or None for unlabelled splits.
        extra: A third file when the dataset needs one (Fishyscapes Static: the ``.npz`` overlay).
    """

    name: str
    image_path: Path
    label_path: Path | None
    extra: Path | None = None


def resolve_root(root: Path | str, subdir: str) -> Path:
    """``root/subdir`` when it exists (the folder of the archive), else ``root`` itself."""
    path = Path(root)
    return path / subdir if (path / subdir).is_dir() else path


def scan(folder: Path, suffix: str) -> list[Path]:
    """Files under ``folder`` (recursively) ending with ``suffix``, sorted by relative path.

    Raises:
        FileNotFoundError: the folder does not exist or holds no such file.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder} (expected files ending {suffix!r})")
    files = sorted(folder.rglob(f"*{suffix}"), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise FileNotFoundError(f"no files ending {suffix!r} found under {folder}")
    return files


def require_label(image_path: Path, label_path: Path, extra_hint: str = "") -> Path:
    """Return ``label_path`` or raise FileNotFoundError naming it."""
    if not label_path.is_file():
        raise FileNotFoundError(
            f"image {image_path} has no label: expected {label_path}{extra_hint}"
        )
    return label_path


class SegmentationDataset(Dataset[Sample]):
    """Base class of the gmmseg loaders (map-style `Dataset`).

    Subclasses fill `frames` and set the class attributes that describe the stored label
    values; decoding, validation (mode, size and values) and mapping to train ids happen here.

    Attributes:
        frames: The frames, sorted by relative path.
        classes: Class names (index = train id).
        palette: RGB colour per class.
        ignore_index: The ignore / void value (255).
        has_labels: False for splits without public labels; their samples carry ``label=None``.
        transform: Optional joint transform applied to every sample.
    """

    classes: ClassVar[tuple[str, ...]] = ()
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    ignore_index: ClassVar[int] = IGNORE_INDEX
    #: Official frame counts per split, compared by ``check_full=True``.
    official_counts: ClassVar[Mapping[str, int]] = {}

    def __init__(
        self,
        frames: list[Frame],
        allowed: NDArray[np.bool_],
        lut: NDArray[np.uint8],
        expected: str,
        hint: str,
        transform: Transform | None = None,
        has_labels: bool = True,
    ) -> None:
        self.frames = frames
        self.transform = transform
        self.has_labels = has_labels
        self._allowed = allowed
        self._lut = lut
        # train-id labels (e.g. Cityscapes' labelTrainIds) map to themselves: skip the lookup
        self._lut_is_identity = bool(np.array_equal(lut, np.arange(256)))
        self._expected = expected
        self._hint = hint

    def _check_full(self, split: str, enabled: bool) -> None:
        if enabled and split in self.official_counts:
            want = self.official_counts[split]
            if len(self.frames) != want:
                raise ValueError(
                    f"{type(self).__name__} split {split!r}: expected the official {want} frames "
                    f"(check_full=True), found {len(self.frames)}"
                )

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def names(self) -> list[str]:
        """Frame ids in dataset order."""
        return [f.name for f in self.frames]

    def file_list(self) -> list[str]:
        """Image and label paths of every frame, in order (the key of cached indices)."""
        return [f"{f.image_path}|{f.label_path}" for f in self.frames]

    def load_image(self, index: int) -> NDArray[np.uint8]:
        """Decode the image of frame ``index``: (H, W, 3) uint8 RGB."""
        return read_image(self.frames[index].image_path)

    def load_label(self, index: int) -> NDArray[np.uint8] | None:
        """Decode, validate and map the label of frame ``index``.

        Returns:
            (H, W) uint8 train ids / canonical anomaly labels, or None for unlabelled splits.

        Raises:
            ValueError: wrong mode or values outside the allowed set, naming the file.
        """
        path = self.frames[index].label_path
        if path is None:
            return None
        stored = read_label(path)
        check_values(stored, self._allowed, path, self._expected, self._hint)
        if self._lut_is_identity:
            return stored  # read_label returns a private, writable array
        return np.take(self._lut, stored)  # = self._lut[stored]

    def _frame(self, index: int) -> Frame:
        if not 0 <= index < len(self.frames):
            raise IndexError(f"index {index} out of range for {len(self.frames)} frames")
        return self.frames[index]

    def __getitem__(self, index: int) -> Sample:
        sample = self._load(index, self._frame(index))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def load_transformed(
        self, index: int, transform: SeededTransform, generator: torch.Generator | None = None
    ) -> Sample:
        """``transform(sample, generator)`` of frame ``index``'s untransformed sample.

        The dataset's own `transform` is not applied. Used by per-draw seeded augmentation
        (:class:`~gmmseg.engine.stream.AugmentedView`).

        Args:
            index: Frame index.
            transform: Joint transform, called with ``generator``.
            generator: Source of the transform's randomness (None: torch's default generator).

        Returns:
            The transformed sample.

        Raises:
            IndexError: ``index`` out of range.
        """
        return transform(self._load(index, self._frame(index)), generator)

    def _load(self, index: int, frame: Frame) -> Sample:
        """The untransformed sample of frame ``index``."""
        image = self.load_image(index)
        label = self.load_label(index)
        if label is not None and frame.label_path is not None:
            check_same_size(image, label, frame.image_path, frame.label_path)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1),
            "label": None if label is None else torch.from_numpy(label.astype(np.int64)),
            "name": frame.name,
            "image_path": str(frame.image_path),
            "label_path": "" if frame.label_path is None else str(frame.label_path),
            "ori_size": (int(image.shape[0]), int(image.shape[1])),
        }

    def __repr__(self) -> str:
        labelled = "" if self.has_labels else ", unlabelled (label=None)"
        return f"{type(self).__name__}({len(self)} frames{labelled})"
