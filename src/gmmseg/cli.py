"""The ``gmmseg`` command line: demo, train, eval, anomaly, predict, score, recipes, convert.

User mistakes and expected failures (unknown recipe or key, bad value, missing, unreadable or
corrupt file, unwritable output, a diverged run) print one line naming the problem and exit with
status 2, without a traceback; pass ``--debug`` (or set ``GMMSEG_DEBUG=1``) to see it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


class UserError(Exception):
    """A mistake in the command line or its inputs."""


def _recipe(name: str, overrides: Sequence[str]) -> Any:
    from gmmseg.recipes import apply_overrides, get_recipe

    return apply_overrides(get_recipe(name), list(overrides))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _cmd_recipes(args: argparse.Namespace) -> int:
    from gmmseg.recipes import RECIPES

    rows = []
    for r in RECIPES.values():
        rows.append(
            {
                "name": r.name,
                "dataset": r.data.dataset,
                "backbone": r.model.backbone,
                "decoder": r.model.decoder,
                "head": r.model.head,
                "crop": "x".join(map(str, r.data.crop_size)),
                "iters": r.train.iters,
                "batch": r.data.batch_size,
                "paper": r.paper_result or "-",
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(row[k])) for row in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from gmmseg.recipes import check_recipe, dry_run_recipe, evaluate_recipe_anomaly, train_recipe

    recipe = _recipe(args.recipe, args.set)
    # The real configuration first: a dry run shrinks the data and iterations, not the checks.
    check_recipe(recipe, training=True)
    work_dir = Path(args.work_dir) if args.work_dir else Path("work_dirs") / recipe.name
    if args.dry_run:
        fixtures = Path(tempfile.mkdtemp(prefix="gmmseg-dry-run-"))
        recipe = dry_run_recipe(recipe, fixtures, iters=args.dry_run_iters)
        work_dir = Path(args.work_dir) if args.work_dir else fixtures / "work"
    try:
        model, result = train_recipe(
            recipe,
            work_dir,
            resume=args.resume,
            tiny=args.dry_run,
            progress=not args.no_progress,
            tensorboard=args.tensorboard,
            allow_changed_settings=args.allow_changed_settings,
        )
        summary: dict[str, Any] = {"recipe": recipe.name, "work_dir": str(work_dir), **result}
        if args.dry_run and recipe.anomaly is not None:
            summary["anomaly"] = evaluate_recipe_anomaly(recipe, model=model, device="cpu")
    finally:
        if args.dry_run and args.work_dir:
            # The generated miniature data (gmmseg's own temporary folder); the work folder
            # the user named is elsewhere and stays.
            shutil.rmtree(fixtures, ignore_errors=True)
    _print_json(summary)
    return 0


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler writing to the ``sys.stderr`` of the moment (a redirected one included)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_load_reports() -> None:
    """Print what loading a checkpoint made by another project converted and dropped."""
    logger = logging.getLogger("gmmseg")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        logger.addHandler(_CurrentStderr())
    logger.setLevel(logging.INFO)


def _cmd_eval(args: argparse.Namespace) -> int:
    from gmmseg.recipes import check_recipe, evaluate_recipe

    _show_load_reports()
    recipe = _recipe(args.recipe, args.set)
    check_recipe(recipe)
    _print_json(
        evaluate_recipe(
            recipe,
            args.checkpoint,
            device=args.device,
            layout=args.layout,
            trust=args.trust_checkpoint,
        )
    )
    return 0


def _cmd_anomaly(args: argparse.Namespace) -> int:
    from gmmseg.recipes import check_recipe, evaluate_recipe_anomaly

    _show_load_reports()
    recipe = _recipe(args.recipe, args.set)
    check_recipe(recipe)
    result = evaluate_recipe_anomaly(
        recipe,
        args.checkpoint,
        datasets=args.datasets,
        device=args.device,
        layout=args.layout,
        trust=args.trust_checkpoint,
        posthoc=_posthoc_file(args),
    )
    _print_json(result)
    return 0


def _posthoc_file(args: argparse.Namespace) -> Path | None:
    """The post-hoc mixtures to score with: ``--posthoc``, else the file beside the checkpoint."""
    from gmmseg.recipes.posthoc import default_posthoc_path

    if args.no_posthoc:
        return None
    if args.posthoc is not None:
        path = Path(args.posthoc)
        if not path.is_file():
            raise UserError(f"post-hoc mixtures file {str(path)!r} does not exist")
        return path
    beside = default_posthoc_path(args.checkpoint)
    if beside.is_file():
        print(f"scoring with the post-hoc mixtures {beside}", file=sys.stderr)
        return beside
    return None


def _cmd_fit_posthoc(args: argparse.Namespace) -> int:
    from gmmseg.heads import PosthocSettings
    from gmmseg.recipes import check_recipe
    from gmmseg.recipes.posthoc import fit_recipe_posthoc

    _show_load_reports()
    recipe = _recipe(args.recipe, args.set)
    check_recipe(recipe)
    settings = PosthocSettings(
        num_components=args.components,
        covariance_type=args.covariance,
        max_samples_per_class=args.samples_per_class,
        normalize=args.normalize,
        projection=args.projection,
        projection_dim=args.projection_dim,
        reg_covar=args.reg_covar,
        seed=args.seed,
    )
    head, path = fit_recipe_posthoc(
        recipe,
        args.checkpoint,
        args.out,
        space=args.space,
        settings=settings,
        max_images=args.max_images,
        device=args.device,
        layout=args.layout,
        trust=args.trust_checkpoint,
    )
    counts = head.sample_counts.tolist()
    _print_json(
        {
            "out": str(path),
            "space": head.info["space"],
            "in_channels": head.in_channels,
            "classes_fitted": head.classes.tolist(),
            "classes_left_out": [c for c in range(head.num_classes) if c not in head.classes],
            "pixels_per_class": head.pixel_counts.tolist(),
            "samples_per_class": counts,
            "images": head.info["images"],
            "reservoir_bytes": head.info["reservoir_bytes"],
            "file_bytes": path.stat().st_size if path is not None else None,
            "seconds": round(float(head.info["seconds"]), 3),
        }
    )
    return 0


def _predict_image(path: Path, model: Any, recipe: Any, device: Any) -> tuple[Any, Any]:
    """Read an image, apply the recipe's test-time resize and normalisation, and predict.

    Returns:
        The (H, W, 3) uint8 image as read, and the model's prediction for it.
    """
    import torch

    from gmmseg.data._io import read_image
    from gmmseg.data.transforms import Normalize, Resize
    from gmmseg.recipes.run import inference_settings

    rgb = read_image(path)
    sample: Any = {
        "image": torch.from_numpy(rgb.copy()).permute(2, 0, 1),
        "label": None,
        "name": path.stem,
        "image_path": str(path),
        "label_path": "",
        "ori_size": rgb.shape[:2],
    }
    if recipe.data.test_scale is not None:
        sample = Resize(recipe.data.test_scale, keep_ratio=True)(sample)
    sample = Normalize()(sample)
    return rgb, inference_settings(recipe).predict(model, sample["image"][None].to(device))


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from gmmseg.data import DemoScenes
    from gmmseg.data.meta import CITYSCAPES_PALETTE
    from gmmseg.engine import anomaly_score_maps
    from gmmseg.engine.distributed import select_device
    from gmmseg.recipes import load_trained
    from gmmseg.recipes.build import folder_classes
    from gmmseg.viz import colorize, heatmap, overlay

    if args.set and not args.recipe:
        raise UserError(
            "--set needs --recipe NAME (the recipe whose fields it changes; without --recipe "
            "the checkpoint's own recipe is used unchanged)"
        )
    if args.write:
        return _predict_submission(args)
    for flag in ("method", "smiyc_dataset", "score"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is only used with --write FORMAT")
    out = Path(args.out)
    images = [Path(p) for p in args.images]
    # Before any work: every input exists, no two collide, nothing is overwritten unasked.
    outputs = _prediction_outputs(images, out, overwrite=args.overwrite)
    device = select_device(args.device)
    _show_load_reports()
    model, recipe = load_trained(
        args.checkpoint,
        _recipe(args.recipe, args.set) if args.recipe else None,
        device=device,
        layout=args.layout,
        trust=args.trust_checkpoint,
    )
    palette: Sequence[Sequence[int]]
    if recipe.data.dataset == "demo":
        palette = DemoScenes.semantic_palette
    elif recipe.data.dataset == "cityscapes":
        palette = CITYSCAPES_PALETTE
    elif recipe.data.dataset == "folder" and folder_classes(recipe.data).palette:
        palette = folder_classes(recipe.data).palette
    else:
        palette = np.random.default_rng(0).integers(0, 256, (256, 3)).tolist()
    out.mkdir(parents=True, exist_ok=True)
    for path, (seg_path, heat_path) in zip(images, outputs, strict=True):
        rgb, pred = _predict_image(path, model, recipe, device)
        scores = anomaly_score_maps(model, pred)
        score = scores.get("likelihood", scores["max_logit"])[0]
        seg = pred.logits[0].argmax(0)
        size = (rgb.shape[1], rgb.shape[0])
        seg_img = Image.fromarray(colorize(seg, palette)).resize(size, Image.Resampling.NEAREST)
        heat = Image.fromarray(heatmap(score)).resize(size, Image.Resampling.BILINEAR)
        Image.fromarray(overlay(rgb, np.asarray(seg_img), 0.5)).save(seg_path)
        heat.save(heat_path)
        print(f"{path} -> {seg_path}, {heat_path}")
    return 0


def _predict_submission(args: argparse.Namespace) -> int:
    """``predict --write FORMAT``: full-resolution results in a benchmark's own files."""
    import torch.nn.functional as F

    from gmmseg.engine import anomaly_score_maps
    from gmmseg.engine.distributed import select_device
    from gmmseg.heads.anomaly import LOGIT_SCORES
    from gmmseg.recipes import load_trained
    from gmmseg.recipes.posthoc import default_posthoc_path
    from gmmseg.submit import SubmissionWriter

    # Every refusal comes before the model is loaded, except those that need the model.
    images = [Path(p) for p in args.images]
    for path in images:
        if not path.is_file():
            raise UserError(f"image {str(path)!r} does not exist")
    smiyc = args.write == "smiyc"
    if smiyc and args.smiyc_dataset is None:
        raise UserError("--write smiyc needs --smiyc-dataset, e.g. AnomalyTrack-all")
    if not smiyc and args.smiyc_dataset is not None:
        raise UserError(f"--smiyc-dataset is only used with --write smiyc, not {args.write}")
    has_scores = args.write in ("smiyc", "fishyscapes")
    known = ["likelihood", *LOGIT_SCORES]
    if args.score is not None and not has_scores:
        raise UserError(f"--score is only used with --write smiyc or fishyscapes, not {args.write}")
    if args.score is not None and args.score not in known:
        raise UserError(f"--score {args.score!r} is not one of {known}")
    device = select_device(args.device)
    writer = SubmissionWriter(
        args.out,
        args.write,
        method=args.method or "gmmseg",
        dataset=args.smiyc_dataset,
        overwrite=args.overwrite,
    )
    writer.prepare([p.stem for p in images])  # checks only: nothing is written yet
    _show_load_reports()
    model, recipe = load_trained(
        args.checkpoint,
        _recipe(args.recipe, args.set) if args.recipe else None,
        device=device,
        layout=args.layout,
        trust=args.trust_checkpoint,
    )
    classes = {"fishyscapes": 19, "cityscapes": 19, "ade20k": 150}.get(args.write)
    if classes is not None and model.num_classes != classes:
        raise UserError(
            f"--write {args.write} takes the {classes} classes of its benchmark, but the model "
            f"of {args.checkpoint} has {model.num_classes} classes"
        )
    score_name = None
    if has_scores:
        own = model.classifier.anomaly_name  # "likelihood" for a GMM classifier
        score_name = args.score or own or "max_logit"
        if score_name == "likelihood" and own != "likelihood":
            raise UserError(
                f"--score likelihood needs a GMM classifier; this model has "
                f"{type(model.classifier).__name__}: choose one of {sorted(LOGIT_SCORES)}"
            )
        print(f"anomaly score: {score_name}")
        beside = default_posthoc_path(args.checkpoint)
        if beside.is_file():
            print(f"note: predict --write does not use the post-hoc mixtures {beside}")
    for path in images:
        rgb, pred = _predict_image(path, model, recipe, device)
        # Full resolution: bilinear logits / scores at the image size, then the argmax.
        size, corners = rgb.shape[:2], model.align_corners
        logits = F.interpolate(pred.logits.float(), size, mode="bilinear", align_corners=corners)
        score = None
        if score_name is not None:
            maps = anomaly_score_maps(model, pred)
            score = F.interpolate(
                maps[score_name][:, None].float(), size, mode="bilinear", align_corners=corners
            )[0, 0]
        written = writer.write(
            path.stem,
            anomaly=score,
            segmentation=logits[0].argmax(0) if not smiyc else None,
        )
        print(f"{path} -> {', '.join(str(w) for w in written)}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from gmmseg import data
    from gmmseg.submit import score_submission

    only = {
        "smiyc": ("method", "smiyc_dataset", "track"),
        "fishyscapes": ("fs", "laf_root", "cityscapes_root", "fs_version"),
    }
    for fmt, flags in only.items():
        for flag in flags:
            if args.format != fmt and getattr(args, flag) is not None:
                raise UserError(
                    f"--{flag.replace('_', '-')} is only used by 'gmmseg score {fmt}', "
                    f"not {args.format}"
                )
    root = Path(args.data)
    dataset: Any
    folder_flags = ("label_map", "image_dir", "label_dir", "image_suffix", "label_suffix")
    if args.data_layout != "folder":
        for flag in folder_flags:
            if getattr(args, flag) is not None:
                raise UserError(
                    f"--{flag.replace('_', '-')} is only used with --data-layout folder"
                )
    if args.data_layout == "folder":
        if args.format != "smiyc":
            raise UserError(
                f"--data-layout folder scores anomaly results in the smiyc format, not "
                f"{args.format}"
            )
        if args.track is not None:
            raise UserError(
                "--track is not used with --data-layout folder: the track follows "
                "--smiyc-dataset (AnomalyTrack-*: anomaly; others: obstacle)"
            )
        if args.smiyc_dataset is None:
            raise UserError(
                "--data-layout folder needs --smiyc-dataset, the SMIYC dataset name the "
                "results were written under (gmmseg predict --write smiyc --smiyc-dataset)"
            )
        dataset = data.FolderAnomaly(
            root,
            image_dir=args.image_dir or "images",
            label_dir=args.label_dir or "labels",
            image_suffix=args.image_suffix or "",
            label_suffix=args.label_suffix or ".png",
            label_map=args.label_map,
        )
    elif args.format == "smiyc":
        track = data.SMIYCObstacleTrack if args.track == "obstacle" else data.SMIYCAnomalyTrack
        dataset = track(root, "validation")
    elif args.format == "fishyscapes":
        if args.fs == "static":
            if args.cityscapes_root is None or args.fs_version is None:
                raise UserError("--fs static needs --cityscapes-root and --fs-version")
            dataset = data.FishyscapesStatic(root, args.cityscapes_root, args.fs_version)
        else:
            if args.laf_root is None:
                raise UserError("--fs lostandfound needs --laf-root (the LostAndFound images)")
            dataset = data.FishyscapesLostAndFound(root, args.laf_root)
    elif args.format == "cityscapes":
        dataset = data.Cityscapes(root, "val")
    else:
        dataset = data.ADE20K(root, "validation")
    result = score_submission(
        args.folder,
        args.format,
        dataset,
        method=args.method,
        smiyc_dataset=args.smiyc_dataset,
        allow_extra=args.allow_extra,
    )
    _print_json(_plain(result))
    return 0


def _plain(value: Any) -> Any:
    """JSON-ready copy of a result: tensors become lists, curves are left out."""
    import math

    import torch

    from gmmseg.metrics import AnomalyCurve

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, AnomalyCurve)}
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _prediction_outputs(
    images: Sequence[Path], out: Path, *, overwrite: bool
) -> list[tuple[Path, Path]]:
    """``(NAME_seg.png, NAME_anomaly.png)`` per input; refuses collisions before any work.

    Two inputs with one file stem would write the same outputs: refused, naming both. An output
    that already exists is refused unless ``overwrite`` (it may be a file gmmseg did not write).
    """
    seen: dict[Path, Path] = {}
    outputs = []
    for path in images:
        if not path.is_file():
            raise UserError(f"image {str(path)!r} does not exist")
        pair = (out / f"{path.stem}_seg.png", out / f"{path.stem}_anomaly.png")
        if pair[0] in seen:
            raise UserError(
                f"images {str(seen[pair[0]])!r} and {str(path)!r} share the name "
                f"{path.stem!r} and would write the same outputs: predict them into separate "
                "--out folders"
            )
        seen[pair[0]] = path
        for target in pair:
            if target.exists() and not overwrite:
                raise UserError(
                    f"output {str(target)!r} already exists: pass --overwrite to replace it, or "
                    "choose another --out folder"
                )
        outputs.append(pair)
    return outputs


def _cmd_demo(args: argparse.Namespace) -> int:
    from gmmseg.demo import run_demo

    try:
        import importlib

        for module in ("matplotlib", "sklearn", "skimage"):
            importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"gmmseg demo needs the 'demo' extra ({e.name} is missing): "
            'pip install "gmmseg[demo]"'
        ) from e
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/metrics.json, report.md, figure.png, curves_*.png")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from gmmseg.data.converters import main as convert_main

    return convert_main(args.args, prog="gmmseg convert")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmmseg",
        description="GMMSeg: semantic segmentation with a generative Gaussian-mixture classifier.",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train GMMSeg and its softmax twin on the demo scenes")
    d.add_argument("--out", default="gmmseg-demo", help="output folder (default ./gmmseg-demo)")
    d.add_argument("--quick", action="store_true", help="CI-sized run (under a minute)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe fields, e.g. optim.lr=1e-4 data.root=/data/cityscapes",
    )
    sets.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")

    t = sub.add_parser("train", parents=[sets], help="train a recipe")
    t.add_argument("recipe")
    t.add_argument("--work-dir", default=None, help="default work_dirs/RECIPE")
    t.add_argument("--resume", default=None, help="'auto' or a checkpoint path")
    t.add_argument(
        "--dry-run", action="store_true", help="a few iterations on fixtures, tiny model"
    )
    t.add_argument("--dry-run-iters", type=int, default=2)
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="resume although the recipe differs from the checkpoint's (recorded in the history)",
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)

    loading = argparse.ArgumentParser(add_help=False)
    loading.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "gmmseg", "official", "mmseg", "hf", "nvlabs"],
        help="the checkpoint's layout (default: detected from its keys)",
    )
    loading.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle a file whose metadata holds objects outside the safe allow-list "
        "(can run code stored in the file: only for files you trust)",
    )

    e = sub.add_parser(
        "eval", parents=[sets, loading], help="mIoU of a checkpoint on the validation set"
    )
    e.add_argument("recipe")
    e.add_argument("--checkpoint", required=True)
    e.set_defaults(func=_cmd_eval)

    a = sub.add_parser(
        "anomaly", parents=[sets, loading], help="anomaly AP/AUROC/FPR95 of a checkpoint"
    )
    a.add_argument("recipe")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--datasets", nargs="+", default=None)
    a.add_argument(
        "--posthoc",
        default=None,
        metavar="FILE",
        help="also score with these post-hoc mixtures (gmmseg fit-posthoc; default: "
        "CHECKPOINT's .posthoc.pt file beside it when it exists)",
    )
    a.add_argument("--no-posthoc", action="store_true", help="ignore a post-hoc mixtures file")
    a.set_defaults(func=_cmd_anomaly)

    f = sub.add_parser(
        "fit-posthoc",
        parents=[sets, loading],
        help="fit class-conditional mixtures to a trained model's features (any classifier)",
    )
    f.add_argument("recipe")
    f.add_argument("--checkpoint", required=True)
    f.add_argument(
        "--out", default=None, help="output file (default: CHECKPOINT_STEM.posthoc.pt beside it)"
    )
    f.add_argument(
        "--space",
        default="auto",
        choices=["auto", "decoder", "embedding"],
        help="decoder features, or a GMM model's embeddings (auto: embeddings for GMM models)",
    )
    f.add_argument("--components", type=int, default=3, help="Gaussians per class (M)")
    f.add_argument("--covariance", default="diag", choices=["diag", "full"])
    f.add_argument(
        "--samples-per-class", type=int, default=5000, help="reservoir size per class (N)"
    )
    f.add_argument("--normalize", action="store_true", help="L2-normalise the features first")
    f.add_argument("--projection", default="none", choices=["none", "random", "pca"])
    f.add_argument("--projection-dim", type=int, default=None)
    f.add_argument("--reg-covar", type=float, default=1e-4, help="added to every variance")
    f.add_argument("--max-images", type=int, default=None, help="fit on the first images only")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_fit_posthoc)

    pr = sub.add_parser(
        "predict", parents=[loading], help="segmentation overlay and anomaly heat-map PNGs"
    )
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--overwrite", action="store_true", help="replace existing output files")
    pr.add_argument(
        "--recipe",
        default=None,
        help="the recipe to build (needed for a checkpoint made by another project)",
    )
    pr.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    pr.add_argument(
        "--write",
        choices=("smiyc", "fishyscapes", "cityscapes", "ade20k"),
        default=None,
        help="write a benchmark's own result files at full resolution instead of PNG overlays",
    )
    pr.add_argument(
        "--method", default=None, help="--write: method name (SMIYC folder; manifest; gmmseg)"
    )
    pr.add_argument("--smiyc-dataset", default=None, help="e.g. AnomalyTrack-all (--write smiyc)")
    pr.add_argument(
        "--score",
        default=None,
        help="--write smiyc/fishyscapes: anomaly score (default likelihood, else max_logit)",
    )
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    pr.set_defaults(func=_cmd_predict)

    sc = sub.add_parser("score", help="score saved results in a benchmark's format")
    sc.add_argument("format", choices=("smiyc", "fishyscapes", "cityscapes", "ade20k"))
    sc.add_argument("folder", help="the results folder (SMIYC: the folder holding anomaly_p/)")
    sc.add_argument("--data", required=True, help="the dataset root with the labels")
    sc.add_argument(
        "--track", choices=("anomaly", "obstacle"), default=None, help="SMIYC (default anomaly)"
    )
    sc.add_argument("--method", default=None, help="SMIYC method folder")
    sc.add_argument("--smiyc-dataset", default=None, help="SMIYC dataset folder to read")
    sc.add_argument(
        "--fs", choices=("lostandfound", "static"), default=None, help="default lostandfound"
    )
    sc.add_argument("--laf-root", default=None, help="Fishyscapes L&F: LostAndFound root")
    sc.add_argument("--cityscapes-root", default=None, help="Fishyscapes Static: Cityscapes")
    sc.add_argument("--fs-version", type=int, default=None, help="Fishyscapes Static: 1, 2, 3")
    sc.add_argument("--allow-extra", action="store_true", help="ignore files of other frames")
    sc.add_argument(
        "--data-layout",
        choices=("official", "folder"),
        default="official",
        help="--data is the benchmark's own layout (default) or a folder of images and "
        "0/1/255 masks (smiyc format; see 'Train on your own data')",
    )
    sc.add_argument("--image-dir", default=None, help="folder layout: images (default images)")
    sc.add_argument("--label-dir", default=None, help="folder layout: masks (default labels)")
    sc.add_argument(
        "--image-suffix",
        default=None,
        help="folder layout: image file ending, e.g. _leftImg8bit.png (default: any image ending)",
    )
    sc.add_argument(
        "--label-suffix", default=None, help="folder layout: mask file ending (default .png)"
    )
    sc.add_argument(
        "--label-map",
        default=None,
        help="folder layout: stored:canonical pairs when masks are not 0/1/255, e.g. 0:0,2:1",
    )
    sc.set_defaults(func=_cmd_score)

    r = sub.add_parser("recipes", help="list the recipes")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_recipes)

    c = sub.add_parser("convert", help="dataset label converters (cityscapes, coco-stuff)")
    c.add_argument("args", nargs=argparse.REMAINDER)
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: arguments (``sys.argv[1:]`` when None).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in words
    args = _parser().parse_args([w for w in words if w != "--debug"])
    args.debug = debug
    if args.command == "train" and args.device != "auto":
        args.set = [*args.set, f"train.device={args.device}"]
    try:
        result: int = args.func(args)
        return result
    except _EXPECTED as e:
        if args.debug or os.environ.get("GMMSEG_DEBUG"):
            raise
        print(f"gmmseg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _expected_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # OSError covers missing, unreadable and unwritable files and a full disk;
    # FloatingPointError a diverged run; DecompressionBombError an image over Pillow's limit.
    return (
        UserError,
        ValueError,
        OSError,
        ImportError,
        FloatingPointError,
        Image.DecompressionBombError,
    )


_EXPECTED = _expected_errors()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text or type(e).__name__


if __name__ == "__main__":
    raise SystemExit(main())
