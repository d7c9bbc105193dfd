"""Fit post-hoc Gaussian mixtures on a softmax model from the mmsegmentation model zoo.

A softmax segmentation network has no density of its own; post-hoc mixtures, fitted once on
its features of the training images, give it GMMSeg's likelihood score without retraining.
This script loads an mmsegmentation checkpoint (or any layout gmmseg reads), fits per-class
mixtures on a training folder (``images/train``, ``labels/train`` with your classes), and
compares the network's own anomaly scores with the mixtures' on an anomaly folder
(``images/``, ``labels/`` with 0 normal, 1 anomaly, 255 void):

    python examples/posthoc_mmseg.py \
        --checkpoint segformer_mit-b0_8x1_1024x1024_160k_cityscapes.pth \
        --recipe segformer_b5_cityscapes_softmax --set model.backbone=mit_b0 \
        --train-root /data/cityscapes_folder --class-file classes.json \
        --anomaly-root /data/my_anomalies

The classes must be the model's (their number is checked against the checkpoint).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmmseg.engine.distributed import select_device
from gmmseg.heads import PosthocSettings
from gmmseg.recipes import apply_overrides, evaluate_recipe_anomaly, get_recipe, load_trained
from gmmseg.recipes.posthoc import fit_recipe_posthoc


def main() -> None:
    """Parse the command line and run the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="weights (mmseg, HF, NVlabs, gmmseg...)")
    p.add_argument("--recipe", default="segformer_b5_cityscapes_softmax", help="model recipe")
    p.add_argument("--train-root", required=True, help="training folder (images/, labels/)")
    p.add_argument("--classes", default="", help="comma-separated class names")
    p.add_argument("--class-file", default="", help="JSON class file (path, or in --train-root)")
    p.add_argument("--anomaly-root", required=True, help="anomaly folder (images/, labels/)")
    p.add_argument("--label-map", default="", help="stored:canonical pairs, e.g. 0:0,2:1")
    p.add_argument("--components", type=int, default=3, help="Gaussians per class")
    p.add_argument("--max-images", type=int, default=None, help="fit on the first images only")
    p.add_argument("--out", default="mixtures.posthoc.pt", help="the fitted mixtures' file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides")
    args = p.parse_args()
    if bool(args.classes) == bool(args.class_file):
        p.error("give the classes with exactly one of --classes or --class-file")
    if Path(args.out).exists() and not args.overwrite:
        p.error(f"{args.out} already exists: pass --overwrite to replace it, or another --out")

    overrides = ["data.dataset=folder", f"data.root={args.train_root}"]
    overrides.append(
        f"data.classes={args.classes}" if args.classes else f"data.class_file={args.class_file}"
    )
    overrides += ["anomaly.datasets=folder", f"anomaly.folder_root={args.anomaly_root}"]
    if args.label_map:
        overrides.append(f"anomaly.folder_label_map={args.label_map}")
    recipe = apply_overrides(get_recipe(args.recipe), [*overrides, *args.set])

    device = select_device(args.device)
    model, recipe = load_trained(args.checkpoint, recipe, device)
    settings = PosthocSettings(num_components=args.components)
    head, path = fit_recipe_posthoc(
        recipe,
        model=model,
        out=args.out,
        settings=settings,
        max_images=args.max_images,
        device=str(device),
    )
    results = evaluate_recipe_anomaly(recipe, model=model, posthoc=head, device=str(device))[
        "folder"
    ]
    print(f"fitted {head.num_classes} classes on {head.info['images']} images -> {path}")
    print(f"\n{'score':<20} {'AP':>7} {'AUROC':>7} {'FPR95':>7}")
    for score, r in results.items():
        origin = "post-hoc mixtures" if score.startswith("posthoc") else "the network's logits"
        print(f"{score:<20} {r['ap']:7.3f} {r['auroc']:7.3f} {r['fpr95']:7.3f}  ({origin})")


if __name__ == "__main__":
    main()
