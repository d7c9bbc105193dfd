"""Write results in the files each benchmark server takes.

| format          | files per frame                                      | content              |
| --------------- | ---------------------------------------------------- | -------------------- |
| ``smiyc``       | ``anomaly_p/<method>/<folder>/<frame>.hdf5``         | float16 scores (1)   |
| ``fishyscapes`` | ``<frame>_anomaly.npy``, ``<frame>_segmentation.npy`` | float32; uint8 0–18  |
| ``cityscapes``  | ``<city>_<seq>_<frame>.png``                         | uint8 label ids      |
| ``ade20k``      | ``<frame>.png``                                      | uint8 class + 1 (2)  |

(1) HDF5 dataset ``value``, gzip level 9. (2) 0 = "other", never written by gmmseg.

Scores: higher = more anomalous, at the image's full resolution. The SMIYC ``<folder>`` is the
folder the SegmentMeIfYouCan toolkit stores a dataset in (:data:`SMIYC_DATASETS`): the
ObstacleTrack validation frames live in ``ObstacleTrack-all`` and the LostAndFound test subsets
in ``LostAndFound-test``, as in the toolkit. The SMIYC ``<frame>`` is the toolkit's frame id:
the image stem, except for the LostAndFound datasets, whose frame id is the stem without its
``_leftImg8bit`` suffix (``04_Maurener_Weg_8_000002_000140_leftImg8bit.png`` →
``04_Maurener_Weg_8_000002_000140.hdf5``).

Never losing a user's data: a :class:`SubmissionWriter` keeps a manifest
(``.gmmseg-submission.json``: format, method and the files it wrote) in its folder.
:meth:`SubmissionWriter.prepare` only checks, so a run can be refused before any work: it
refuses, in one line naming the folder, a folder whose manifest names another format or method,
and a folder holding files of the format that gmmseg did not write (unless ``overwrite=True``).
The folder and its manifest are created by the first :meth:`SubmissionWriter.write`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from PIL import Image
from torch import Tensor

from gmmseg.data.converters import cityscapes_train_ids_to_label_ids

__all__ = [
    "MANIFEST_NAME",
    "SMIYC_DATASETS",
    "SubmissionFormat",
    "SubmissionWriter",
    "cityscapes_frame_id",
]

SubmissionFormat = Literal["smiyc", "fishyscapes", "cityscapes", "ade20k"]
"""A benchmark's result format: ``"smiyc"``, ``"fishyscapes"``, ``"cityscapes"``, ``"ade20k"``."""
FORMATS: tuple[str, ...] = get_args(SubmissionFormat)

#: SMIYC dataset name (the toolkit's) → the folder under ``anomaly_p/<method>/`` it reads it from.
SMIYC_DATASETS: dict[str, str] = {
    "AnomalyTrack-all": "AnomalyTrack-all",
    "AnomalyTrack-validation": "AnomalyTrack-validation",
    "ObstacleTrack-all": "ObstacleTrack-all",
    "ObstacleTrack-validation": "ObstacleTrack-all",
    "LostAndFound-test": "LostAndFound-test",
    "LostAndFound-testValid": "LostAndFound-test",
    "LostAndFound-testNoKnown": "LostAndFound-test",
}

#: Name of the manifest a :class:`SubmissionWriter` keeps in its folder.
MANIFEST_NAME = ".gmmseg-submission.json"
_FLOAT16_MAX = 65504.0
_CITYSCAPES_ID = re.compile(r"^(.+?_\d{6}_\d{6})")
# The toolkit's LostAndFound frame id: <scene id>_<scene name>_<seq>_<time>.
_LAF_ID = re.compile(r"^\d{2}_.+_\d{6}_\d{6}$")
_LAF_SUFFIX = "_leftImg8bit"
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")
# Files of each format found in a folder (for the ownership check).
_PATTERNS: dict[str, tuple[str, ...]] = {
    "smiyc": ("*.hdf5",),
    "fishyscapes": ("*_anomaly.npy", "*_segmentation.npy"),
    "cityscapes": ("*.png",),
    "ade20k": ("*.png",),
}


def cityscapes_frame_id(name: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes file stem or frame id.

    Args:
        name: e.g. ``"frankfurt_000000_000294_leftImg8bit"`` or ``"frankfurt_000000_000294"``.

    Returns:
        ``"frankfurt_000000_000294"``: the prefix the official evaluation matches files by.

    Raises:
        ValueError: the name has no ``<city>_<6 digits>_<6 digits>`` prefix.
    """
    m = _CITYSCAPES_ID.match(name)
    if m is None:
        raise ValueError(
            f"name {name!r} is not a Cityscapes frame: expected '<city>_<seq:06d>_<frame:06d>...'"
        )
    return m.group(1)


def _laf_frame_id(name: str) -> str:
    """The SMIYC toolkit's LostAndFound frame id of an image stem (or of a frame id).

    The toolkit finds ``*_leftImg8bit.<ext>`` images and names a frame by the stem without that
    suffix (``DatasetLostAndFound.laf_id_from_image_path``); it reads the frame's result from
    ``<frame id>.hdf5``.
    """
    fid = name[: -len(_LAF_SUFFIX)] if name.endswith(_LAF_SUFFIX) else name
    if not _LAF_ID.match(fid):
        raise ValueError(
            f"name {name!r} is not a LostAndFound frame: expected "
            "'<scene:02d>_<scene name>_<seq:06d>_<time:06d>[_leftImg8bit]'"
        )
    return fid


def _array(name: str, x: Tensor | npt.NDArray[Any]) -> npt.NDArray[Any]:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) map, got shape {tuple(x.shape)}")
    return x


def _scores(name: str, x: Tensor | npt.NDArray[Any], limit: float | None) -> npt.NDArray[Any]:
    a = _array(name, x)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must hold float scores, got dtype {a.dtype}")
    a64 = a.astype(np.float64)
    if not np.isfinite(a64).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(a64)).sum())} NaN/inf")
    if limit is not None and np.abs(a64).max(initial=0.0) > limit:
        raise ValueError(
            f"{name} must lie within ±{limit:g} to be stored as float16 (SMIYC stores float16), "
            f"got max |s| = {np.abs(a64).max():g}; rescale the scores"
        )
    return a


def _ids(name: str, x: Tensor | npt.NDArray[Any], num_classes: int) -> npt.NDArray[np.int64]:
    a = _array(name, x)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer train ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = (a < 0) | (a >= num_classes)
    if bad.any():
        vals = np.unique(a[bad])[:10].tolist()
        raise ValueError(f"{name} must hold train ids in [0, {num_classes}), got values {vals}")
    return a


def _save_atomic(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` then rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_png(path: Path, values: npt.NDArray[Any]) -> None:
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L")
    _save_atomic(path, lambda p: img.save(p, format="PNG"))


def _save_npy(path: Path, values: npt.NDArray[Any]) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, values)

    _save_atomic(path, write)


def _save_hdf5(path: Path, values: npt.NDArray[np.float16]) -> None:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - exercised without the extra only
        raise ImportError('writing SMIYC files needs h5py: pip install "gmmseg[benchmarks]"') from e

    def write(p: Path) -> None:
        with h5py.File(p, "w") as f:
            f.create_dataset("value", data=values, compression="gzip", compression_opts=9)

    _save_atomic(path, write)


class SubmissionWriter:
    """Writes one method's results for one benchmark into a folder, never over others' files.

    Args:
        out: the output folder (created when the first file is written). SMIYC files go under
            ``out/anomaly_p/<method>/<folder>/``, the other formats directly into ``out``.
        format: ``"smiyc"``, ``"fishyscapes"``, ``"cityscapes"`` or ``"ade20k"``.
        method: the method's name: a folder name for SMIYC, recorded in the manifest for all.
        dataset: SMIYC only: a key of :data:`SMIYC_DATASETS`, e.g. ``"AnomalyTrack-all"``.
        overwrite: replace files of the format in the folder that gmmseg did not write.

    Raises:
        ValueError: an unknown format, an empty or path-like method, a missing or unknown SMIYC
            dataset.

    Example:
        >>> w = SubmissionWriter("out", "smiyc", method="gmmseg", dataset="AnomalyTrack-all")
        >>> w.prepare(["validation0000"])  # doctest: +SKIP
        >>> w.write("validation0000", anomaly=scores)  # doctest: +SKIP
    """

    def __init__(
        self,
        out: Path | str,
        format: SubmissionFormat,
        *,
        method: str = "gmmseg",
        dataset: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if not isinstance(method, str) or not _SAFE_NAME.match(method) or method in (".", ".."):
            raise ValueError(f"method must be a plain folder name, got {method!r}")
        self.out = Path(out)
        self.format: SubmissionFormat = format
        self.method = method
        self.overwrite = overwrite
        if format == "smiyc":
            if dataset not in SMIYC_DATASETS:
                raise ValueError(
                    f"dataset must be one of {sorted(SMIYC_DATASETS)} for SMIYC, got {dataset!r}"
                )
            self.folder = self.out / "anomaly_p" / method / SMIYC_DATASETS[dataset]
        elif dataset is not None:
            raise ValueError(f"dataset is only used by the SMIYC format, got {dataset!r}")
        else:
            self.folder = self.out
        self.dataset = dataset
        # Frames checked by prepare() (name -> its file names), and the file names the manifest
        # already records for this writer (None until the first write).
        self._planned: dict[str, list[str]] = {}
        self._recorded: set[str] | None = None

    def files(self, name: str) -> list[Path]:
        """The file(s) of frame ``name`` (a file stem / frame id), in this writer's folder.

        SMIYC LostAndFound datasets name the file by the toolkit's frame id, the stem without
        ``_leftImg8bit``; Cityscapes by the ``<city>_<seq>_<frame>`` prefix.

        Raises:
            ValueError: a name with a path separator, or (Cityscapes, LostAndFound) one that is
                not a frame name of that dataset.
        """
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name.startswith("."):
            raise ValueError(f"frame name must be a plain file stem, got {name!r}")
        if self.format == "smiyc":
            assert self.dataset is not None
            fid = _laf_frame_id(name) if self.dataset.startswith("LostAndFound") else name
            return [self.folder / f"{fid}.hdf5"]
        if self.format == "fishyscapes":
            return [self.folder / f"{name}_anomaly.npy", self.folder / f"{name}_segmentation.npy"]
        if self.format == "cityscapes":
            return [self.folder / f"{cityscapes_frame_id(name)}.png"]
        return [self.folder / f"{name}.png"]

    def _manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            files = data["files"]
            if not isinstance(files, list):
                raise TypeError("files is not a list")
            return {"format": data["format"], "method": data["method"], "files": files}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"output folder {self.folder} has an unreadable gmmseg manifest {path.name} "
                f"({e}); remove it or choose another folder"
            ) from e

    def prepare(self, names: Iterable[str]) -> None:
        """Check the folder for every frame about to be written; writes nothing.

        Call it with all frame names before the work starts (the CLI does, before it loads the
        model), so a refusal comes before any computation. :meth:`write` checks a name that was
        not prepared. The first :meth:`write` creates the folder and records the prepared
        frames' files in the manifest.

        Raises:
            ValueError: two names that map to one file; a folder whose manifest names another
                format or method; files of the format that gmmseg did not write (without
                ``overwrite``). Each message is one line naming the folder.
        """
        targets: dict[Path, str] = {}
        for name in [*self._planned, *names]:
            for f in self.files(name):
                if f in targets and targets[f] != name:
                    raise ValueError(
                        f"frames {targets[f]!r} and {name!r} would both write {f}; "
                        "give them distinct names"
                    )
                targets[f] = name
        self._check()
        for f, name in targets.items():
            self._planned.setdefault(name, [])
            if f.name not in self._planned[name]:
                self._planned[name].append(f.name)

    def _check(self) -> set[str]:
        """Refusals of :meth:`prepare`; returns the file names the manifest records."""
        manifest = self._manifest()
        if manifest is not None and (manifest["format"], manifest["method"]) != (
            self.format,
            self.method,
        ):
            raise ValueError(
                f"output folder {self.folder} already holds {manifest['format']} files of method "
                f"{manifest['method']!r} written by gmmseg; write {self.format} files of method "
                f"{self.method!r} to another folder"
            )
        owned = {str(f) for f in manifest["files"]} if manifest is not None else set()
        if self.folder.is_dir() and not self.overwrite:
            foreign = sorted(
                p.name
                for pattern in _PATTERNS[self.format]
                for p in self.folder.glob(pattern)
                if p.name not in owned
            )
            if foreign:
                raise ValueError(
                    f"output folder {self.folder} already holds {len(foreign)} {self.format} "
                    f"file(s) that gmmseg did not write (e.g. {foreign[0]}): choose an empty "
                    "folder, or pass overwrite=True (--overwrite) to write beside and over them"
                )
        return owned

    def _record(self) -> None:
        """Before a frame is written: create the folder and claim the prepared frames' files."""
        if self._recorded is None:
            # First write: check again (the folder may have changed since prepare).
            self._recorded = self._check()
        new = {f for files in self._planned.values() for f in files} - self._recorded
        if not new and (self.folder / MANIFEST_NAME).is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        files = sorted(self._recorded | new)
        record = {
            "format": self.format,
            "method": self.method,
            "dataset": self.dataset,
            "files": files,
        }
        text = json.dumps(record, indent=1)
        _save_atomic(self.folder / MANIFEST_NAME, lambda p: p.write_text(text))
        self._recorded = set(files)

    def write(
        self,
        name: str,
        *,
        anomaly: Tensor | npt.NDArray[Any] | None = None,
        segmentation: Tensor | npt.NDArray[Any] | None = None,
    ) -> list[Path]:
        """Write the files of one frame.

        Args:
            name: the frame id / image file stem (Cityscapes: starting ``<city>_<seq>_<frame>``).
            anomaly: (H, W) float scores, higher = more anomalous (SMIYC, Fishyscapes); finite,
                and within ±65504 for SMIYC (stored as float16).
            segmentation: (H, W) integer train ids (Fishyscapes and Cityscapes: 0–18;
                ADE20K: 0–149).

        Returns:
            The paths written.

        Raises:
            ValueError: a missing or extra array for the format, a wrong rank, dtype or value,
                shapes that differ (Fishyscapes), or a refusal of :meth:`prepare`.
        """
        needs = {
            "smiyc": (True, False),
            "fishyscapes": (True, True),
            "cityscapes": (False, True),
            "ade20k": (False, True),
        }[self.format]
        for arg, value, needed in (
            ("anomaly", anomaly, needs[0]),
            ("segmentation", segmentation, needs[1]),
        ):
            if needed and value is None:
                raise ValueError(f"the {self.format} format needs {arg}=..., got None")
            if not needed and value is not None:
                raise ValueError(f"the {self.format} format takes no {arg}; pass None")
        files = self.files(name)
        # Validate every array before anything is written.
        if self.format == "smiyc":
            assert anomaly is not None
            s16 = _scores("anomaly", anomaly, _FLOAT16_MAX).astype(np.float16)
        elif self.format == "fishyscapes":
            assert anomaly is not None and segmentation is not None
            s32 = _scores("anomaly", anomaly, None).astype(np.float32)
            seg = _ids("segmentation", segmentation, 19).astype(np.uint8)
            if s32.shape != seg.shape:
                raise ValueError(
                    f"anomaly and segmentation of {name!r} must have one shape, got "
                    f"{s32.shape} and {seg.shape}"
                )
        elif self.format == "cityscapes":
            assert segmentation is not None
            label_ids = cityscapes_train_ids_to_label_ids(_ids("segmentation", segmentation, 19))
        else:
            assert segmentation is not None
            ade = (_ids("segmentation", segmentation, 150) + 1).astype(np.uint8)
        if name not in self._planned:
            self.prepare([name])
        self._record()
        if self.format == "smiyc":
            _save_hdf5(files[0], s16)
        elif self.format == "fishyscapes":
            _save_npy(files[0], s32)
            _save_npy(files[1], seg)
        elif self.format == "cityscapes":
            _save_png(files[0], label_ids)
        else:
            _save_png(files[0], ade)
        return files
