"""Train GMMSeg and its softmax twin on a folder of your own images and label PNGs.

The folder holds ``images/{train,val}/...`` and ``labels/{train,val}/...`` (label PNGs of train
ids 0…C−1 and 255 = ignore, matched to the images by name) and the classes come from
``--classes road,car,sky`` or a JSON class file (see the page "Train on your own data"):

    python examples/train_on_folder.py --root /data/mine --class-file classes.json \
        --recipe segformer_b5_cityscapes_gmm --set model.pretrained=mit_b5.pth train.iters=20000

Both models are trained with the same recipe, seed and data; only the classifier differs.
``--tiny`` builds miniature networks of the recipe's family (a quick check that the folder,
the classes and the pipeline fit together, in seconds on a CPU; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmmseg.recipes import apply_overrides, get_recipe, train_recipe


def main() -> None:
    """Parse the command line and run the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the dataset folder (images/, labels/)")
    p.add_argument("--classes", default="", help="comma-separated class names")
    p.add_argument("--class-file", default="", help="JSON class file (path, or name in --root)")
    p.add_argument("--recipe", default="segformer_b5_cityscapes_gmm", help="GMMSeg recipe")
    p.add_argument("--work-dir", default="work_dirs/own_data", help="output folder")
    p.add_argument("--tiny", action="store_true", help="miniature networks (a quick check)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides")
    args = p.parse_args()
    if bool(args.classes) == bool(args.class_file):
        p.error("give the classes with exactly one of --classes or --class-file")

    overrides = ["data.dataset=folder", f"data.root={args.root}"]
    if args.classes:
        overrides.append(f"data.classes={args.classes}")
    else:
        overrides.append(f"data.class_file={args.class_file}")
    gmm = apply_overrides(get_recipe(args.recipe), [*overrides, *args.set])
    if not gmm.twin:
        p.error(f"recipe {gmm.name!r} has no softmax twin")
    softmax = apply_overrides(get_recipe(gmm.twin), [*overrides, *args.set])

    results = {}
    for recipe in (gmm, softmax):
        work = Path(args.work_dir) / recipe.name
        print(f"training {recipe.name} ({recipe.model.head} classifier) -> {work}", flush=True)
        _, result = train_recipe(recipe, work, tiny=args.tiny, progress=False)
        results[recipe.name] = result["eval"]

    print(f"\n{'recipe':<40} {'mIoU':>7} {'mAcc':>7} {'aAcc':>7}")
    for name, r in results.items():
        print(f"{name:<40} {r['mIoU']:7.3f} {r['mAcc']:7.3f} {r['aAcc']:7.3f}")


if __name__ == "__main__":
    main()
