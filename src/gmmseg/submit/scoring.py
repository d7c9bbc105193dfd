"""Score saved results (any method's) in a benchmark's format against a gmmseg dataset split.

Files are matched to the split's frames by name, as the official tools match them (SMIYC: the
frame id; Cityscapes: the ``<city>_<seq>_<frame>`` prefix; Fishyscapes: the leading integer
index, ``NNNN_...``; ADE20K: the image stem); a frame without its file, or a file that belongs
to no frame, is an error listing them (``allow_extra=True`` accepts extra files, e.g. the test
frames in a SMIYC ``*-all`` folder). The numbers are those of the official tools:

| format          | metrics                                                                  |
| --------------- | ------------------------------------------------------------------------ |
| ``smiyc``       | SMIYC binned pixel metrics (float16), then sIoU / PPV / F1 at their δ     |
| ``fishyscapes`` | exact AP, AUROC, FPR95 (``first_ge``) of the scores cast to float32       |
| ``cityscapes``  | class / category IoU and iIoU, predicted ignored label ids count as misses |
| ``ade20k``      | mIoU, mAcc, aAcc over 150 classes, predicted 0 ("other") counts as a miss |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from gmmseg.data.anomaly import (
    FishyscapesLostAndFound,
    FishyscapesStatic,
    SMIYCAnomalyTrack,
    SMIYCObstacleTrack,
)
from gmmseg.data.base import SegmentationDataset
from gmmseg.data.closed_set import ADE20K, Cityscapes
from gmmseg.data.converters import cityscapes_label_ids_to_train_ids
from gmmseg.data.folder import FolderAnomaly
from gmmseg.metrics import (
    AnomalyMetrics,
    AnomalyResult,
    CityscapesMetrics,
    CityscapesResult,
    ComponentMetrics,
    ComponentResult,
    SegmentationMetrics,
    SegmentationResult,
    Track,
)
from gmmseg.submit.writers import (
    FORMATS,
    SMIYC_DATASETS,
    SubmissionFormat,
    cityscapes_frame_id,
)

__all__ = [
    "ScoreResult",
    "read_ade20k",
    "read_cityscapes",
    "read_fishyscapes",
    "read_smiyc",
    "score_submission",
]


class ScoreResult(TypedDict, total=False):
    """Output of :func:`score_submission`; the keys present depend on the format.

    Keys:
        format: the format scored.
        folder: the folder the files were read from.
        frames: number of frames scored.
        method: SMIYC method name.
        pixel: SMIYC / Fishyscapes pixel metrics (:class:`~gmmseg.metrics.AnomalyResult`).
        component: SMIYC component metrics (:class:`~gmmseg.metrics.ComponentResult`).
        cityscapes: Cityscapes scores (:class:`~gmmseg.metrics.CityscapesResult`).
        segmentation: ADE20K scores (:class:`~gmmseg.metrics.SegmentationResult`).
    """

    format: str
    folder: str
    frames: int
    method: str
    pixel: AnomalyResult
    component: ComponentResult
    cityscapes: CityscapesResult
    segmentation: SegmentationResult


def read_smiyc(path: Path | str) -> npt.NDArray[np.floating]:
    """The (H, W) score map of a SMIYC ``.hdf5`` file (dataset ``value``, as stored).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``value`` dataset, or not one 2-D float map (the file is named).
    """
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - exercised without the extra only
        raise ImportError('reading SMIYC files needs h5py: pip install "gmmseg[benchmarks]"') from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SMIYC result not found: {path}")
    with h5py.File(path, "r") as f:
        if "value" not in f:
            raise ValueError(f"{path}: expected an HDF5 dataset 'value', found {sorted(f.keys())}")
        value = np.asarray(f["value"][()])
    value = np.squeeze(value)  # the toolkit squeezes too
    if value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
        raise ValueError(
            f"{path}: expected one (H, W) float map, got shape {value.shape} {value.dtype}"
        )
    return value


def read_fishyscapes(
    folder: Path | str, name: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(<name>_anomaly.npy as float32, <name>_segmentation.npy)`` of a Fishyscapes output folder.

    Args:
        folder: the output folder.
        name: the files' common prefix, e.g. ``"0003"`` or ``"0003_frankfurt_000001_034047_rgb"``.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: not (H, W) maps of one shape, float scores, integer train ids 0–18.
    """
    folder = Path(folder)
    a_path, s_path = folder / f"{name}_anomaly.npy", folder / f"{name}_segmentation.npy"
    for p in (a_path, s_path):
        if not p.is_file():
            raise FileNotFoundError(f"Fishyscapes result not found: {p}")
    scores, seg = np.load(a_path), np.load(s_path)
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(
            f"{a_path}: expected (H, W) float scores, got {scores.shape} {scores.dtype}"
        )
    if seg.shape != scores.shape or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(
            f"{s_path}: expected integer train ids of shape {scores.shape}, got "
            f"{seg.shape} {seg.dtype}"
        )
    bad = (seg < 0) | (seg > 18)
    if bad.any():
        raise ValueError(
            f"{s_path}: expected train ids 0–18, got {np.unique(seg[bad])[:10].tolist()}"
        )
    # The Fishyscapes metric script casts the scores to float32 before ranking.
    return scores.astype(np.float32), seg.astype(np.int64)


def _read_png(path: Path) -> npt.NDArray[Any]:
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel label PNG, got mode {img.mode}")
        return np.array(img)


def read_cityscapes(path: Path | str) -> npt.NDArray[np.int64]:
    """Train ids of a Cityscapes result PNG holding label ids (ignored ids become 255).

    Raises:
        ValueError: a value outside the label ids 0–33, or a colour image.
    """
    path = Path(path)
    try:
        out: npt.NDArray[np.int64] = cityscapes_label_ids_to_train_ids(_read_png(path)).astype(
            np.int64
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return out


def read_ade20k(path: Path | str) -> npt.NDArray[np.int64]:
    """Train ids of an ADE20K result PNG (value v ∈ 1…150 → v − 1; 0 "other" → 255).

    Raises:
        ValueError: a value above 150, or a colour image.
    """
    path = Path(path)
    v = _read_png(path).astype(np.int64)
    if v.size and v.max() > 150:
        raise ValueError(f"{path}: expected values 0–150, got {sorted(np.unique(v[v > 150]))[:10]}")
    return np.where(v == 0, 255, v - 1)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _match(
    folder: Path, expected: dict[str, Path], found: Sequence[Path], allow_extra: bool, what: str
) -> None:
    missing = sorted(n for n, p in expected.items() if not p.is_file())
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks the {what} of {len(missing)} of {len(expected)} frames: "
            f"{_listing(missing)}"
        )
    wanted = set(expected.values())
    extra = sorted(str(p.relative_to(folder)) for p in found if p not in wanted)
    if extra and not allow_extra:
        raise ValueError(
            f"{folder} holds {len(extra)} {what} file(s) of no frame of the split: "
            f"{_listing(extra)} (pass allow_extra=True / --allow-extra to ignore them)"
        )


def _labels(dataset: SegmentationDataset, index: int) -> npt.NDArray[np.uint8]:
    label = dataset.load_label(index)
    if label is None:
        raise ValueError(
            f"{type(dataset).__name__} frame {dataset.frames[index].name!r} has no label "
            "(a test split?): only labelled splits can be scored; the server scores the test set"
        )
    return label


def _check_shape(path: Path, pred: npt.NDArray[Any], label: npt.NDArray[Any]) -> None:
    if pred.shape != label.shape:
        raise ValueError(
            f"{path}: shape {pred.shape} differs from its label's {label.shape}; results must be "
            "at the image's full resolution"
        )


def _smiyc_folder(
    folder: Path, dataset: SegmentationDataset, method: str | None, smiyc_dataset: str | None
) -> tuple[Path, str]:
    default: str | None
    if isinstance(dataset, SMIYCAnomalyTrack):
        default = "AnomalyTrack-validation"
    elif isinstance(dataset, SMIYCObstacleTrack):
        default = "ObstacleTrack-validation"
    elif isinstance(dataset, FolderAnomaly):
        default = None  # a folder of one's own: the results may sit under any SMIYC name
    else:
        raise ValueError(
            "dataset must be SMIYCAnomalyTrack, SMIYCObstacleTrack or FolderAnomaly for the "
            f"smiyc format, got {type(dataset).__name__}"
        )
    name = smiyc_dataset or default
    if name is None:
        raise ValueError(
            "a FolderAnomaly dataset needs smiyc_dataset (--smiyc-dataset): the SMIYC dataset "
            f"name its results were written under, one of {sorted(SMIYC_DATASETS)}"
        )
    if name not in SMIYC_DATASETS:
        raise ValueError(f"smiyc_dataset must be one of {sorted(SMIYC_DATASETS)}, got {name!r}")
    root = folder / "anomaly_p"
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found: the SMIYC results folder holds anomaly_p/<method>/<dataset>/"
        )
    if method is None:
        methods = sorted(p.name for p in root.glob("*") if p.is_dir())
        if len(methods) != 1:
            raise ValueError(
                f"{root} holds {len(methods)} method folders {methods[:10]}: pass method=... "
                "(--method) to choose one"
            )
        method = methods[0]
    return root / method / SMIYC_DATASETS[name], method


def score_submission(
    folder: Path | str,
    format: SubmissionFormat,
    dataset: SegmentationDataset,
    *,
    method: str | None = None,
    smiyc_dataset: str | None = None,
    allow_extra: bool = False,
) -> ScoreResult:
    """Score the saved results in ``folder`` against the labelled split ``dataset``.

    Args:
        folder: the output folder: for SMIYC the folder holding ``anomaly_p/``, otherwise the
            folder holding the files (Cityscapes: searched recursively, as the official script).
        format: ``"smiyc"``, ``"fishyscapes"``, ``"cityscapes"`` or ``"ade20k"``.
        dataset: the split with labels: :class:`~gmmseg.data.SMIYCAnomalyTrack` /
            :class:`~gmmseg.data.SMIYCObstacleTrack` (validation),
            or :class:`~gmmseg.data.FolderAnomaly` (needs ``smiyc_dataset``; scored as the
            obstacle track unless it names an ``AnomalyTrack`` dataset),
            :class:`~gmmseg.data.FishyscapesLostAndFound` / :class:`~gmmseg.data.FishyscapesStatic`,
            :class:`~gmmseg.data.Cityscapes` (val) or :class:`~gmmseg.data.ADE20K` (validation).
        method: SMIYC method folder (needed when ``anomaly_p/`` holds several).
        smiyc_dataset: the SMIYC dataset name whose folder to read (default: the track's
            validation split, ``AnomalyTrack-validation`` / ``ObstacleTrack-validation``).
        allow_extra: accept files that belong to no frame of the split.

    Returns:
        :class:`ScoreResult`.

    Raises:
        FileNotFoundError: a frame without its result file (all such frames are listed).
        ValueError: extra files, a dataset of the wrong kind or without labels, a file of the
            wrong shape / dtype / values (each names the file).

    Example:
        >>> ds = SMIYCObstacleTrack("/data/dataset_ObstacleTrack")  # doctest: +SKIP
        >>> result = score_submission("results", "smiyc", ds)  # doctest: +SKIP
        >>> components = result["component"]  # doctest: +SKIP
        >>> components["sIoU"]  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder not found: {folder}")
    names = dataset.names
    if format == "smiyc":
        return _score_smiyc(folder, dataset, names, method, smiyc_dataset, allow_extra)
    if format == "fishyscapes":
        if not isinstance(dataset, FishyscapesLostAndFound | FishyscapesStatic):
            raise ValueError(
                "dataset must be FishyscapesLostAndFound or FishyscapesStatic for the "
                f"fishyscapes format, got {type(dataset).__name__}"
            )
        expected = _fishyscapes_files(folder, names, allow_extra)
        pixel = AnomalyMetrics(mode="exact", fpr95_rule="first_ge")
        for i, n in enumerate(names):
            prefix = expected[n].name[: -len("_anomaly.npy")]
            scores, _ = read_fishyscapes(folder, prefix)
            label = _labels(dataset, i)
            _check_shape(expected[n], scores, label)
            pixel.update(scores, label)
        return ScoreResult(
            format=format, folder=str(folder), frames=len(names), pixel=pixel.compute()
        )
    if format == "cityscapes":
        if not isinstance(dataset, Cityscapes):
            raise ValueError(
                "dataset must be Cityscapes for the cityscapes format, got "
                f"{type(dataset).__name__}"
            )
        return _score_cityscapes(folder, dataset, names, allow_extra)
    if not isinstance(dataset, ADE20K):
        raise ValueError(
            f"dataset must be ADE20K for the ade20k format, got {type(dataset).__name__}"
        )
    expected = {n: folder / f"{n}.png" for n in names}
    _match(folder, expected, sorted(folder.glob("*.png")), allow_extra, ".png")
    seg = SegmentationMetrics(150, void_predictions="miss")
    for i, n in enumerate(names):
        pred = read_ade20k(expected[n])
        label = _labels(dataset, i)
        _check_shape(expected[n], pred, label)
        seg.update(pred, label.astype(np.int64))
    return ScoreResult(
        format=format, folder=str(folder), frames=len(names), segmentation=seg.compute()
    )


_FS_INDEX = re.compile(r"^(\d+)_")


def _fishyscapes_files(folder: Path, names: list[str], allow_extra: bool) -> dict[str, Path]:
    """Each frame's ``*_anomaly.npy``, matched by the leading integer index of both names.

    The Fishyscapes evaluation pairs labels ``NNNN_<frame>_labels.png`` and outputs by that
    index: a submission container reads ``/input/NNNN_<frame>_rgb.png`` and may name its output
    ``NNNN_<frame>_rgb_anomaly.npy`` (gmmseg's container), ``NNNN_anomaly.npy`` or
    ``NNNN_<frame>_anomaly.npy`` (:class:`~gmmseg.submit.SubmissionWriter` with frame ids).
    """
    by_index: dict[int, list[Path]] = {}
    unnamed: list[Path] = []
    for p in sorted(folder.glob("*_anomaly.npy")):
        m = _FS_INDEX.match(p.name)
        if m is None:
            unnamed.append(p)
        else:
            by_index.setdefault(int(m.group(1)), []).append(p)
    expected: dict[str, Path] = {}
    for n in names:
        m = _FS_INDEX.match(n)
        if m is None:
            raise ValueError(f"Fishyscapes frame {n!r} has no leading index 'NNNN_'")
        hits = by_index.get(int(m.group(1)), [])
        if len(hits) > 1:
            raise ValueError(
                f"{folder} holds {len(hits)} _anomaly.npy results for frame {n} (index "
                f"{int(m.group(1))}): {_listing([h.name for h in hits])}; keep one"
            )
        expected[n] = hits[0] if hits else folder / f"{n}_anomaly.npy"
    found = [p for hits in by_index.values() for p in hits] + unnamed
    _match(folder, expected, found, allow_extra, "_anomaly.npy")
    seg = {
        n: p.with_name(p.name[: -len("_anomaly.npy")] + "_segmentation.npy")
        for n, p in expected.items()
    }
    _match(folder, seg, [], True, "_segmentation.npy")
    return expected


def _score_smiyc(
    folder: Path,
    dataset: SegmentationDataset,
    names: list[str],
    method: str | None,
    smiyc_dataset: str | None,
    allow_extra: bool,
) -> ScoreResult:
    sub, method = _smiyc_folder(folder, dataset, method, smiyc_dataset)
    expected = {n: sub / f"{n}.hdf5" for n in names}
    _match(sub, expected, sorted(sub.glob("*.hdf5")), allow_extra, ".hdf5")
    track: Track = "obstacle" if isinstance(dataset, SMIYCObstacleTrack) else "anomaly"
    if isinstance(dataset, FolderAnomaly) and not (smiyc_dataset or "").startswith("Anomaly"):
        # the toolkit scores the ObstacleTrack and LostAndFound datasets as obstacles
        track = "obstacle"
    # The toolkit's order: pixel metrics first; the components threshold at their best-F1 δ.
    pixel = AnomalyMetrics(mode="smiyc_binned", score_dtype=torch.float16)
    for i, n in enumerate(names):
        scores, label = read_smiyc(expected[n]), _labels(dataset, i)
        _check_shape(expected[n], scores, label)
        pixel.update(scores, label)
    pixel_result = pixel.compute()
    comp = ComponentMetrics.from_pixel_result(pixel_result, track, score_dtype=torch.float16)
    for i, n in enumerate(names):
        comp.update(read_smiyc(expected[n]), _labels(dataset, i))
    return ScoreResult(
        format="smiyc",
        folder=str(sub),
        frames=len(names),
        method=method,
        pixel=pixel_result,
        component=comp.compute(),
    )


def _score_cityscapes(
    folder: Path, dataset: Cityscapes, names: list[str], allow_extra: bool
) -> ScoreResult:
    pngs = sorted(folder.rglob("*.png"))
    by_id: dict[str, list[Path]] = {}
    for p in pngs:
        try:
            by_id.setdefault(cityscapes_frame_id(p.stem), []).append(p)
        except ValueError:
            by_id.setdefault("", []).append(p)  # not a Cityscapes name: an extra file
    expected: dict[str, Path] = {}
    for n in names:
        hits = by_id.get(cityscapes_frame_id(n), [])
        if len(hits) > 1:
            raise ValueError(
                f"{folder} holds {len(hits)} results for frame {n}: "
                f"{_listing([str(h.relative_to(folder)) for h in hits])}"
            )
        expected[n] = hits[0] if hits else folder / f"{cityscapes_frame_id(n)}.png"
    _match(folder, expected, pngs, allow_extra, ".png")
    instance_paths = []
    for f in dataset.frames:
        assert f.label_path is not None
        stem = f.label_path.name
        suffix = "_gtFine_labelTrainIds.png"
        inst = f.label_path.with_name(stem[: -len(suffix)] + "_gtFine_instanceIds.png")
        instance_paths.append(inst if stem.endswith(suffix) else None)
    have = [p is not None and p.is_file() for p in instance_paths]
    if any(have) and not all(have):
        lacking = [n for n, h in zip(names, have, strict=True) if not h]
        raise FileNotFoundError(
            f"*_gtFine_instanceIds.png exist for some frames but not for {len(lacking)}: "
            f"{_listing(lacking)}; iIoU needs them for every frame or none"
        )
    metrics = CityscapesMetrics(void_predictions="miss")
    for i, n in enumerate(names):
        pred, label = read_cityscapes(expected[n]), _labels(dataset, i)
        _check_shape(expected[n], pred, label)
        inst_path = instance_paths[i]
        inst_ids = None
        if all(have) and inst_path is not None:
            inst_ids = _read_png(inst_path).astype(np.int64)
        metrics.update(pred, label.astype(np.int64), inst_ids)
    return ScoreResult(
        format="cityscapes", folder=str(folder), frames=len(names), cityscapes=metrics.compute()
    )
