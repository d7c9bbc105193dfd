"""Evaluate a checkpoint trained elsewhere on your own anomaly folder and write SMIYC files.

The checkpoint may be the official GMMSeg release, an mmsegmentation, Hugging Face or NVlabs
SegFormer file, or a gmmseg checkpoint (its layout is detected from its keys). The anomaly
folder holds ``images/`` and ``labels/`` (masks of 0 normal, 1 anomaly, 255 void, matched to
the images by name; ``--label-map 0:0,2:1`` reads other values):

    python examples/anomaly_foreign_checkpoint.py \
        --checkpoint segformer_mit-b5_gmmseg_cityscapes.pth \
        --recipe segformer_b5_cityscapes_gmm --anomaly-root /data/my_anomalies --out results

It prints AP / AUROC / FPR95 of every anomaly score, writes each frame's score map in the
SegmentMeIfYouCan format (``results/anomaly_p/<method>/<dataset>/<frame>.hdf5``), then scores
those files as the benchmark's toolkit would (pixel and component metrics).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from gmmseg.data import FolderAnomaly
from gmmseg.engine import anomaly_score_maps
from gmmseg.engine.distributed import select_device
from gmmseg.recipes import apply_overrides, evaluate_recipe_anomaly, get_recipe, load_trained
from gmmseg.recipes.build import build_anomaly_datasets
from gmmseg.recipes.run import inference_settings
from gmmseg.submit import SubmissionWriter, score_submission


def main() -> None:
    """Parse the command line and run the example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="weights (any supported layout)")
    p.add_argument("--recipe", default="segformer_b5_cityscapes_gmm", help="the model's recipe")
    p.add_argument("--anomaly-root", required=True, help="folder with images/ and labels/")
    p.add_argument("--label-map", default="", help="stored:canonical pairs, e.g. 0:0,2:1")
    p.add_argument("--out", default="smiyc_results", help="SMIYC results folder")
    p.add_argument("--method", default="gmmseg", help="SMIYC method name (a folder name)")
    p.add_argument("--smiyc-dataset", default="AnomalyTrack-all", help="SMIYC dataset name")
    p.add_argument("--layout", default="auto", help="checkpoint layout (default: detected)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides")
    args = p.parse_args()

    overrides = ["anomaly.datasets=folder", f"anomaly.folder_root={args.anomaly_root}"]
    if args.label_map:
        overrides.append(f"anomaly.folder_label_map={args.label_map}")
    recipe = apply_overrides(get_recipe(args.recipe), [*overrides, *args.set])
    device = select_device(args.device)
    model, recipe = load_trained(args.checkpoint, recipe, device, layout=args.layout)
    results = evaluate_recipe_anomaly(recipe, model=model, device=str(device))["folder"]
    print(f"{'score':<20} {'AP':>7} {'AUROC':>7} {'FPR95':>7}")
    for score, r in results.items():
        print(f"{score:<20} {r['ap']:7.3f} {r['auroc']:7.3f} {r['fpr95']:7.3f}")

    # the folder as evaluated above: the recipe's test-time resize and normalisation
    frames = build_anomaly_datasets(recipe, ["folder"])["folder"]
    assert isinstance(frames, FolderAnomaly)
    settings = inference_settings(recipe)
    # the classifier's own score ("likelihood" of a GMM classifier), else the max logit
    score_name = model.classifier.anomaly_name or "max_logit"
    writer = SubmissionWriter(args.out, "smiyc", method=args.method, dataset=args.smiyc_dataset)
    writer.prepare(frames.names)  # refuses to write over files gmmseg did not write
    with torch.inference_mode():
        for i in range(len(frames)):
            sample = frames[i]
            pred = settings.predict(model, sample["image"][None].to(device))
            score = anomaly_score_maps(model, pred)[score_name][:, None].float()
            # full resolution: SMIYC scores every pixel of the stored image
            full = F.interpolate(
                score, sample["ori_size"], mode="bilinear", align_corners=model.align_corners
            )
            writer.write(sample["name"], anomaly=full[0, 0])
    scored = score_submission(
        args.out, "smiyc", frames, method=args.method, smiyc_dataset=args.smiyc_dataset
    )
    pixel, component = scored["pixel"], scored["component"]
    print(f"\nwrote {scored['frames']} {score_name} maps to {scored['folder']}")
    print(f"SMIYC pixel: AP {pixel['ap']:.3f}, FPR95 {pixel['fpr95']:.3f}")
    print(f"SMIYC components: sIoU {component['sIoU']:.3f}, mean F1 {component['mean_F1']:.3f}")


if __name__ == "__main__":
    main()
