"""SegFormer's Mix Transformer (MiT-B0 … MiT-B5) as a four-level feature pyramid.

Each stage is an overlapping patch embedding (a strided convolution + LayerNorm), a stack of
transformer blocks whose self-attention reduces the key/value sequence spatially by ``sr_ratio``
(efficient self-attention) and whose feed-forward is a Mix-FFN (Linear → 3×3 depthwise conv → GELU
→ Linear), and a final LayerNorm. The four stage outputs have strides 4, 8, 16, 32.

LayerNorm epsilons are two options, because the projects that publish MiT weights differ, and a
model must use the convention of the file it loads (:data:`MIT_NORM_EPS`):

* ``norm_eps``: the norms of the blocks and after each stage;
* ``embed_norm_eps``: the norms of the patch embeddings and of the attention's key/value
  reduction.

| convention | ``norm_eps`` | ``embed_norm_eps`` |
|---|---|---|
| NVlabs SegFormer (the default) | 1e-6 | 1e-5 |
| mmsegmentation, the GMMSeg release | 1e-6 | 1e-6 |
| Hugging Face ``SegformerModel`` | 1e-5 | 1e-5 |

The difference is small but real: with a wrong convention the features of a randomly initialised
MiT-B0 differ by 1e-5 to 2e-5, well above float32 rounding (the right one agrees with
transformers to 4e-6 in float32 and 1e-14 in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmmseg.backbones._common import Backbone, DropPath, check_image, drop_path_rates

__all__ = [
    "MIT_NORM_EPS",
    "MiTConfig",
    "MixVisionTransformer",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
]


@dataclass(frozen=True)
class MiTConfig:
    """Architecture of a Mix Transformer.

    Attributes:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial-reduction ratio per stage.
        patch_sizes: kernel of each overlapping patch embedding.
        patch_strides: stride of each overlapping patch embedding.
        mlp_ratio: hidden width of the Mix-FFN relative to the stage width.
    """

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    patch_strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4


#: ``(norm_eps, embed_norm_eps)`` of each published MiT convention (see the module docstring).
MIT_NORM_EPS: dict[str, tuple[float, float]] = {
    "nvlabs": (1e-6, 1e-5),
    "mmseg": (1e-6, 1e-6),
    "hf": (1e-5, 1e-5),
}

MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "mit_b3": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "mit_b4": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "mit_b5": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with padding ``kernel // 2`` followed by LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(B, C_in, H, W) → ((B, h·w, dim) tokens, h, w)."""
        y: Tensor = self.proj(x)
        h, w = y.shape[-2:]
        tokens: Tensor = self.norm(rearrange(y, "b c h w -> b (h w) c"))
        return tokens, int(h), int(w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a spatially reduced sequence."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, sr_eps: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=sr_eps)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """(B, h·w, dim) → (B, h·w, dim)."""
        q = rearrange(self.q(x), "b n (k d) -> b k n d", k=self.num_heads)
        src = x
        if self.sr_ratio > 1:
            grid = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
            src = self.sr_norm(rearrange(self.sr(grid), "b c h w -> b (h w) c"))
        kv = rearrange(self.kv(src), "b n (two k d) -> two b k n d", two=2, k=self.num_heads)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        y: Tensor = self.proj(rearrange(out, "b k n d -> b n (k d)"))
        return y


class MixFFN(nn.Module):
    """Linear → 3×3 depthwise convolution → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """(B, h·w, dim) → (B, h·w, dim)."""
        y = rearrange(self.fc1(x), "b (h w) c -> b c h w", h=h, w=w)
        y = rearrange(self.dwconv(y), "b c h w -> b (h w) c")
        out: Tensor = self.fc2(self.act(y))
        return out


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        eps: float,
        sr_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, sr_eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """(B, h·w, dim) → (B, h·w, dim)."""
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return out


class MiTStage(nn.Module):
    """Overlapping patch embedding, blocks, LayerNorm; returns a (B, C, h, w) channels-last map."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        patch_size: int,
        patch_stride: int,
        mlp_ratio: int,
        drop_paths: list[float],
        eps: float,
        embed_eps: float,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, patch_stride, embed_eps)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[j], eps, embed_eps)
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, dim, h, w)."""
        tokens, h, w = self.patch_embed(x)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        out: Tensor = rearrange(self.norm(tokens), "b (h w) c -> b c h w", h=h, w=w)
        return out


class MixVisionTransformer(Backbone):
    """SegFormer's hierarchical Mix Transformer encoder.

    Args:
        config: architecture (see :data:`MIT_CONFIGS` for B0–B5).
        drop_path_rate: stochastic-depth rate of the last block, increasing linearly from 0
            (0.1 in SegFormer's configurations).
        norm_eps: LayerNorm epsilon in the blocks and after each stage (1e-6 in the NVlabs and
            mmsegmentation releases, 1e-5 in Hugging Face's).
        in_channels: channels of the input image.
        embed_norm_eps: LayerNorm epsilon of the patch embeddings and of the attention's
            key/value reduction (1e-5 in the NVlabs and Hugging Face releases, 1e-6 in
            mmsegmentation's and the GMMSeg release's). :data:`MIT_NORM_EPS` lists both values
            of each convention.

    Attributes:
        out_channels: ``config.embed_dims``.
        strides: (4, 8, 16, 32) for the standard patch strides.

    Raises:
        ValueError: on per-stage settings of unequal lengths or an epsilon that is not > 0.

    Example:
        ```python
        net = mit_b0().eval()
        feats = net(torch.zeros(1, 3, 64, 64))
        # shapes (1, 32, 16, 16), (1, 64, 8, 8), (1, 160, 4, 4), (1, 256, 2, 2)
        ```
    """

    def __init__(
        self,
        config: MiTConfig,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
        in_channels: int = 3,
        embed_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for arg, eps in (("norm_eps", norm_eps), ("embed_norm_eps", embed_norm_eps)):
            if not (isinstance(eps, (int, float)) and 0 < eps < float("inf")):
                raise ValueError(f"{arg} must be a finite float > 0, got {eps!r}")
        n = len(config.embed_dims)
        for field in ("depths", "num_heads", "sr_ratios", "patch_sizes", "patch_strides"):
            if len(getattr(config, field)) != n:
                raise ValueError(
                    f"config.{field} must have {n} entries (one per stage), got "
                    f"{getattr(config, field)}"
                )
        self.config = config
        self.in_channels = in_channels
        self.norm_eps = float(norm_eps)
        self.embed_norm_eps = float(embed_norm_eps)
        rates = drop_path_rates(drop_path_rate, config.depths)
        chans = (in_channels, *config.embed_dims)
        self.stages = nn.ModuleList(
            MiTStage(
                chans[i],
                config.embed_dims[i],
                config.depths[i],
                config.num_heads[i],
                config.sr_ratios[i],
                config.patch_sizes[i],
                config.patch_strides[i],
                config.mlp_ratio,
                rates[i],
                norm_eps,
                embed_norm_eps,
            )
            for i in range(n)
        )
        self.out_channels = tuple(config.embed_dims)
        strides: list[int] = []
        s = 1
        for st in config.patch_strides:
            s *= st
            strides.append(s)
        self.strides = tuple(strides)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the four stage outputs.

        Args:
            x: (B, 3, H, W) float images.

        Returns:
            Four tensors (B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉) with C_i = ``out_channels[i]`` and
            s_i = ``strides[i]``, in channels-last memory format.
        """
        check_image(x, self.in_channels)
        # channels-last all the way: each patch embedding then yields its tokens as a view, and
        # each stage returns its map in channels-last memory format without a copy
        x = x.contiguous(memory_format=torch.channels_last)
        feats: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _mit(
    name: str, drop_path_rate: float, norm_eps: float, in_channels: int, embed_norm_eps: float
) -> MixVisionTransformer:
    return MixVisionTransformer(
        MIT_CONFIGS[name], drop_path_rate, norm_eps, in_channels, embed_norm_eps
    )


def mit_b0(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B0: widths (32, 64, 160, 256), depths (2, 2, 2, 2); 3.3M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b0", drop_path_rate, norm_eps, in_channels, embed_norm_eps)


def mit_b1(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B1: widths (64, 128, 320, 512), depths (2, 2, 2, 2); 13.2M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b1", drop_path_rate, norm_eps, in_channels, embed_norm_eps)


def mit_b2(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B2: widths (64, 128, 320, 512), depths (3, 4, 6, 3); 24.2M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b2", drop_path_rate, norm_eps, in_channels, embed_norm_eps)


def mit_b3(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B3: widths (64, 128, 320, 512), depths (3, 4, 18, 3); 44.1M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b3", drop_path_rate, norm_eps, in_channels, embed_norm_eps)


def mit_b4(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B4: widths (64, 128, 320, 512), depths (3, 8, 27, 3); 60.8M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b4", drop_path_rate, norm_eps, in_channels, embed_norm_eps)


def mit_b5(
    drop_path_rate: float = 0.1,
    norm_eps: float = 1e-6,
    in_channels: int = 3,
    embed_norm_eps: float = 1e-5,
) -> MixVisionTransformer:
    """MiT-B5: widths (64, 128, 320, 512), depths (3, 6, 40, 3); 81.4M parameters.

    Arguments as :class:`MixVisionTransformer`'s.
    """
    return _mit("mit_b5", drop_path_rate, norm_eps, in_channels, embed_norm_eps)
