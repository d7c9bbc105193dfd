"""Backbone throughput on CPU: gmmseg vs the Hugging Face implementation of the same network.

Forward (inference mode) and forward+backward of a 512×512 batch of 2, for mit_b0 (vs
``transformers.SegformerModel`` returning its four stage maps) and swin_tiny (vs
``transformers.SwinBackbone``), both loaded with the same weights through gmmseg's converter;
resnet50_v1c at output stride 8 has no Hugging Face twin and is compared with itself in
channels_last memory format (informational).
Goal: ratio = reference time / gmmseg time ≥ 0.9 (within 10 % of Hugging Face; the two run
the same operators, so parity is the expected result).

Usage: python benchmarks/bench_backbones.py [--size 512] [--batch 2] [--repeats 3] [--threads N]

Ours and the reference are timed in alternation, so that a change of machine load affects both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

from _common import interleaved_medians, report
from gmmseg.backbones import load_pretrained, mit_b0, resnet50_v1c, swin_tiny


def hf_mit() -> tuple[nn.Module, Callable[[nn.Module, Tensor], object]]:
    import transformers

    cfg = transformers.SegformerConfig(drop_path_rate=0.0)  # the MiT-B0 defaults
    # The four stage maps, as gmmseg's backbone returns them for a decoder (and as the Swin
    # reference returns its feature maps): the loss reads all four on both sides.
    model = transformers.SegformerModel(cfg)
    return model, lambda m, x: m(pixel_values=x, output_hidden_states=True).hidden_states


def hf_swin() -> tuple[nn.Module, Callable[[nn.Module, Tensor], object]]:
    import transformers

    cfg = transformers.SwinConfig(
        drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    return transformers.SwinBackbone(cfg), lambda m, x: m(pixel_values=x).feature_maps


def loss_of(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out.float().mean()
    return sum((t.float().mean() for t in out), torch.zeros(()))  # type: ignore[union-attr]


def fwd_and_fwd_bwd(
    model: nn.Module, call: Callable[[nn.Module, Tensor], object], x: Tensor
) -> tuple[Callable[[], object], Callable[[], object]]:
    model.eval()

    def fwd() -> None:
        with torch.inference_mode():
            call(model, x)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        loss_of(call(model, x)).backward()

    return fwd, fwd_bwd


def row(case: str, ours: float, ref: float, goal: str, batch: int) -> dict[str, object]:
    ratio = ref / ours
    return {
        "case": case,
        "ours_s": ours,
        "reference_s": ref,
        "ratio": ratio,
        "ours_images_per_s": batch / ours,
        "reference_images_per_s": batch / ref,
        "goal": goal,
        "pass": ratio >= 0.9 if goal.startswith("ratio") else True,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    tag = f"{args.batch}x{args.size}x{args.size}"
    rows = []

    def ours_call(m: nn.Module, t: Tensor) -> object:
        return m(t)

    for name, build, ref_fn in (("mit_b0", mit_b0, hf_mit), ("swin_tiny", swin_tiny, hf_swin)):
        kwargs = {"norm_eps": 1e-5} if name == "mit_b0" else {}
        ours = build(drop_path_rate=0.0, **kwargs)  # type: ignore[operator]
        ref, ref_call = ref_fn()
        load_pretrained(ours, ref.state_dict(), source="hf")
        o_fwd, o_bwd = fwd_and_fwd_bwd(ours, ours_call, x)
        r_fwd, r_bwd = fwd_and_fwd_bwd(ref, ref_call, x)
        o_f, r_f = interleaved_medians([o_fwd, r_fwd], args.repeats)
        o_b, r_b = interleaved_medians([o_bwd, r_bwd], args.repeats)
        rows.append(row(f"{name} forward {tag} vs HF", o_f, r_f, "ratio >= 0.9", args.batch))
        rows.append(row(f"{name} fwd+bwd {tag} vs HF", o_b, r_b, "ratio >= 0.9", args.batch))
        del ours, ref

    net = resnet50_v1c(output_stride=8)
    net_cl = resnet50_v1c(output_stride=8).to(memory_format=torch.channels_last)
    net_cl.load_state_dict(net.state_dict())
    x_cl = x.to(memory_format=torch.channels_last)
    o_fwd, _ = fwd_and_fwd_bwd(net, ours_call, x)
    c_fwd, _ = fwd_and_fwd_bwd(net_cl, ours_call, x_cl)
    o_f, c_f = interleaved_medians([o_fwd, c_fwd], max(1, args.repeats - 1))
    rows.append(
        row(f"resnet50_v1c OS8 forward {tag} vs channels_last", o_f, c_f, "info", args.batch)
    )
    report("bench_backbones", rows)


if __name__ == "__main__":
    main()
