"""``gmmseg demo``: GMMSeg and its softmax twin on the embedded demo scenes, in minutes on a CPU.

Both models share the backbone (:func:`~gmmseg.backbones.convnet_small`, from scratch), the
SegFormer decoder, the data order, the augmentation and the schedule (recipes ``demo`` and
``demo_softmax``); only the classifier differs. The closed-set mIoU is measured on ``val``, the
anomaly metrics on ``ood`` (faces and photographs pasted into the scenes) and ``ood_near``
(held-out digits 8 and 9). GMMSeg's anomaly score is its likelihood, −max_c log p(x | c); the
softmax model is scored with MSP, max-logit and energy. After training, each model also gets
post-hoc class-conditional mixtures (:data:`POSTHOC_SETTINGS`) fitted to its training pixels'
features (the softmax model's decoder features, GMMSeg's embeddings), scored by
−max_c log p(x | c) and −log p(x).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from gmmseg.data import DemoScenes
from gmmseg.data.meta import ANOMALY_PALETTE
from gmmseg.data.samplers import collate_samples
from gmmseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from gmmseg.engine import anomaly_score_maps, latest_checkpoint
from gmmseg.heads import PosthocMixtures, PosthocSettings
from gmmseg.metrics import AnomalyResult
from gmmseg.recipes import (
    Recipe,
    apply_overrides,
    evaluate_recipe_anomaly,
    from_dict,
    get_recipe,
    load_trained,
)
from gmmseg.recipes.build import build_anomaly_datasets
from gmmseg.recipes.posthoc import default_posthoc_path, fit_recipe_posthoc
from gmmseg.recipes.run import anomaly_summary, train_recipe
from gmmseg.segmentor import Segmentor
from gmmseg.viz import colorize, heatmap, image_grid, plot_curves, to_uint8_image

__all__ = ["POSTHOC_SETTINGS", "QUICK_OVERRIDES", "demo_recipes", "results_table", "run_demo"]

#: What ``--quick`` changes (CI budget: under a minute).
QUICK_OVERRIDES = (
    "train.iters=150",
    "data.demo_train_images=300",
    "data.demo_val_images=60",
    "anomaly.demo_images=60",
    "optim.warmup_iters=15",
)
_SOFTMAX_SCORES = ("msp", "max_logit", "energy")
#: The post-hoc mixtures fitted on both trained models (chosen on ``val``: docs/demo.md).
POSTHOC_SETTINGS = PosthocSettings(num_components=5, covariance_type="full")
_POSTHOC_ROWS = (("posthoc_likelihood", "−max log p(x∣c)"), ("posthoc_marginal", "−log p(x)"))


def demo_recipes(quick: bool = False, seed: int = 0) -> tuple[Recipe, Recipe]:
    """The GMMSeg and softmax recipes the demo trains (``quick``: the CI-sized variant)."""
    extra = [*(QUICK_OVERRIDES if quick else ()), f"train.seed={seed}"]
    return (
        apply_overrides(get_recipe("demo"), extra),
        apply_overrides(get_recipe("demo_softmax"), extra),
    )


def _figure(gmm: Segmentor, softmax: Segmentor, recipe: Recipe, out: Path, n: int = 6) -> Path:
    ds = build_anomaly_datasets(recipe, ["demo_ood"])["demo_ood"]
    batch = next(iter(DataLoader(ds, batch_size=n, collate_fn=collate_samples)))
    images = batch["image"]
    pg = gmm.predict(images)
    ps = softmax.predict(images)
    g_scores = anomaly_score_maps(gmm, pg)["likelihood"]
    s_scores = anomaly_score_maps(softmax, ps)["msp"]  # the usual and (here) strongest baseline
    palette = DemoScenes.semantic_palette
    rows = []
    for i in range(images.shape[0]):
        rows.append(
            [
                to_uint8_image(images[i], IMAGENET_MEAN, IMAGENET_STD),
                colorize(batch["label"][i], ANOMALY_PALETTE, ignore_color=(128, 128, 128)),
                colorize(pg.logits[i].argmax(0), palette),
                colorize(ps.logits[i].argmax(0), palette),
                heatmap(g_scores[i]),
                heatmap(s_scores[i]),
            ]
        )
    titles = ["image", "anomaly GT", "GMMSeg", "softmax", "GMM -log p", "softmax MSP"]
    path = out / "figure.png"
    image_grid(rows, titles, scale=2).save(path)
    return path


def _curves(raw: dict[str, dict[str, AnomalyResult]], out: Path) -> list[Path]:
    paths = []
    for split, results in raw.items():
        curves = {}
        for name, r in results.items():
            fpr, tpr = r["curve"].roc()
            precision, recall = r["curve"].pr()
            curves[name] = (fpr, tpr, recall, precision)
        paths.append(plot_curves(curves, out / f"curves_{split}.png", title=split))
    return paths


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def results_table(metrics: dict[str, Any]) -> str:
    """The Markdown table of a demo's ``metrics.json`` (percentages)."""
    g, s = metrics["gmmseg"], metrics["softmax"]
    lines = [
        "| model | score | val mIoU | ood AP | ood AUROC | ood FPR95 "
        "| near AP | near AUROC | near FPR95 |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| GMMSeg | −log p(x∣c) | {_pct(g['mIoU'])} | {_pct(g['ap'])} | {_pct(g['auroc'])} | "
        f"{_pct(g['fpr95'])} | {_pct(g['near']['ap'])} | {_pct(g['near']['auroc'])} | "
        f"{_pct(g['near']['fpr95'])} |",
    ]
    for score in _SOFTMAX_SCORES:
        a, b = s[score], s["near"][score]
        lines.append(
            f"| softmax | {score} | {_pct(s['mIoU'])} | {_pct(a['ap'])} | {_pct(a['auroc'])} | "
            f"{_pct(a['fpr95'])} | {_pct(b['ap'])} | {_pct(b['auroc'])} | {_pct(b['fpr95'])} |"
        )
    for key, model in (("softmax_posthoc", "softmax"), ("gmmseg_posthoc", "GMMSeg")):
        if key not in metrics:  # runs from before the post-hoc rows
            continue
        p = metrics[key]
        for score, label in _POSTHOC_ROWS:
            a, b = p[score], p["near"][score]
            lines.append(
                f"| {model} + post-hoc mixtures | {label} | {_pct(p['mIoU'])} | "
                f"{_pct(a['ap'])} | {_pct(a['auroc'])} | {_pct(a['fpr95'])} | "
                f"{_pct(b['ap'])} | {_pct(b['auroc'])} | {_pct(b['fpr95'])} |"
            )
    return "\n".join(lines)


def _train_one(
    recipe: dict[str, Any], work_dir: str, progress: bool, label: str, position: int
) -> dict[str, Any]:
    """Train one demo model on one CPU thread (deterministic whatever the machine's cores).

    Then fit its post-hoc mixtures (:data:`POSTHOC_SETTINGS`) on the training split and write
    them beside the checkpoint.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = from_dict(Recipe, recipe)
        model, result = train_recipe(
            r, work_dir, progress=progress, progress_label=label, progress_position=position
        )
        found = latest_checkpoint(work_dir)
        assert found is not None
        head, path = fit_recipe_posthoc(
            r, model=model, out=default_posthoc_path(found), settings=POSTHOC_SETTINGS, device="cpu"
        )
    finally:
        torch.set_num_threads(threads)
    assert path is not None
    result["checkpoint"] = str(found)
    result["posthoc"] = {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "space": head.info["space"],
        "seconds": head.info["seconds"],
        "reservoir_bytes": head.info["reservoir_bytes"],
        "samples": int(head.sample_counts.sum()),
        "settings": dataclasses.asdict(POSTHOC_SETTINGS),
    }
    return result


def run_demo(
    out: Path | str = "gmmseg-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    figures: bool = True,
    parallel: bool = True,
) -> dict[str, Any]:
    """Train both models, evaluate them, and write the report.

    Writes into ``out``: ``metrics.json``, ``report.md``, ``figure.png`` (image, anomaly ground
    truth, both predictions, both anomaly maps on ``ood`` frames), ``curves_ood.png`` and
    ``curves_ood_near.png`` (ROC and precision-recall), and each model's training folder (with
    its post-hoc mixtures beside the checkpoint).

    Args:
        out: output folder.
        quick: the CI-sized run (:data:`QUICK_OVERRIDES`).
        seed: seed of weights, data order and augmentation.
        progress: progress bars.
        figures: write the figure and curves (needs matplotlib for the curves).
        parallel: train the two models at once in two processes when the machine has two or
            more cores. Each model trains on one thread either way, so the result does not
            depend on the machine.

    Returns:
        The ``metrics.json`` content: ``{"gmmseg": {"mIoU", "ap", "auroc", "fpr95", "near"},
        "softmax": {"mIoU", "msp", "max_logit", "energy", "near"}, "softmax_posthoc" and
        "gmmseg_posthoc": {"mIoU", "posthoc_likelihood", "posthoc_marginal", "near", "fit"},
        "seconds", ...}`` with fractions in [0, 1] (``fit``: the post-hoc fit's seconds,
        reservoir and file bytes).
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gmm_recipe, soft_recipe = demo_recipes(quick, seed)
    jobs = [(gmm_recipe, out / "gmmseg", "GMMSeg", 0), (soft_recipe, out / "softmax", "softmax", 1)]
    if (os.cpu_count() or 1) >= 2 and parallel:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            futures = [
                pool.submit(_train_one, r.to_dict(), str(d), progress, lab, pos)
                for r, d, lab, pos in jobs
            ]
            results = [f.result() for f in futures]
    else:
        results = [_train_one(r.to_dict(), str(d), progress, lab, 0) for r, d, lab, _ in jobs]
    g_train, s_train = results
    gmm, _ = load_trained(Path(g_train["checkpoint"]), gmm_recipe)
    soft, _ = load_trained(Path(s_train["checkpoint"]), soft_recipe)
    train_seconds = time.perf_counter() - start
    g_head = PosthocMixtures.load(g_train["posthoc"]["file"])
    s_head = PosthocMixtures.load(s_train["posthoc"]["file"])
    g_raw = evaluate_recipe_anomaly(
        gmm_recipe, model=gmm, device="cpu", return_raw=True, posthoc=g_head
    )
    s_raw = evaluate_recipe_anomaly(
        soft_recipe, model=soft, device="cpu", return_raw=True, posthoc=s_head
    )
    g_ood, g_near = g_raw["demo_ood"]["likelihood"], g_raw["demo_ood_near"]["likelihood"]
    metrics: dict[str, Any] = {
        "gmmseg": {
            "mIoU": g_train["eval"]["mIoU"],
            **anomaly_summary(g_ood),
            "near": anomaly_summary(g_near),
        },
        "softmax": {
            "mIoU": s_train["eval"]["mIoU"],
            **{k: anomaly_summary(s_raw["demo_ood"][k]) for k in _SOFTMAX_SCORES},
            "near": {k: anomaly_summary(s_raw["demo_ood_near"][k]) for k in _SOFTMAX_SCORES},
        },
    }
    for key, train, raw in (
        ("softmax_posthoc", s_train, s_raw),
        ("gmmseg_posthoc", g_train, g_raw),
    ):
        metrics[key] = {
            "mIoU": train["eval"]["mIoU"],
            **{k: anomaly_summary(raw["demo_ood"][k]) for k, _ in _POSTHOC_ROWS},
            "near": {k: anomaly_summary(raw["demo_ood_near"][k]) for k, _ in _POSTHOC_ROWS},
            "fit": train["posthoc"],
        }
    if figures:
        _figure(gmm, soft, gmm_recipe, out)
        _curves(
            {
                split: {
                    "GMMSeg likelihood": g_raw[f"demo_{split}"]["likelihood"],
                    **{f"softmax {k}": s_raw[f"demo_{split}"][k] for k in _SOFTMAX_SCORES},
                    "softmax + post-hoc −max log p(x|c)": s_raw[f"demo_{split}"][
                        "posthoc_likelihood"
                    ],
                    "GMMSeg + post-hoc −max log p(x|c)": g_raw[f"demo_{split}"][
                        "posthoc_likelihood"
                    ],
                }
                for split in ("ood", "ood_near")
            },
            out,
        )
    metrics["seconds"] = time.perf_counter() - start
    metrics["train_seconds"] = train_seconds
    metrics["quick"] = quick
    metrics["seed"] = seed
    metrics["recipes"] = {"gmmseg": gmm_recipe.to_dict(), "softmax": soft_recipe.to_dict()}
    metrics["torch"] = torch.__version__
    metrics["threads_per_model"] = 1
    metrics["parallel"] = bool(parallel and (os.cpu_count() or 1) >= 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    best = max(metrics["softmax"][k]["ap"] for k in _SOFTMAX_SCORES)
    report = [
        "# gmmseg demo",
        "",
        f"GMMSeg and its softmax twin trained {gmm_recipe.train.iters} iterations each "
        f"(seed {seed}{', quick' if quick else ''}), each on one CPU thread"
        f"{', in parallel' if metrics['parallel'] else ''}; {metrics['seconds']:.0f} s in total. "
        "Percentages.",
        "",
        results_table(metrics),
        "",
        f"mIoU difference (GMMSeg − softmax): "
        f"{100 * (metrics['gmmseg']['mIoU'] - metrics['softmax']['mIoU']):+.1f} points. "
        f"ood AP difference (GMMSeg − best softmax score): "
        f"{100 * (metrics['gmmseg']['ap'] - best):+.1f} points.",
        "",
        "![figure](figure.png)" if figures else "",
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    return metrics
