"""Swin Transformer (tiny, small, base; window 7 or 12) as a four-level feature pyramid.

A 4×4 patch embedding, then four stages of blocks alternating regular and shifted window
attention (with a learned relative position bias), separated by 2×2 patch merging. Each stage
output goes through its own LayerNorm (``norms[i]``) and is returned at strides 4, 8, 16, 32.

Windows follow the segmentation codebases (mmsegmentation, the official Swin segmentation
release, Hugging Face ``SwinBackbone``): feature maps are zero-padded on the bottom/right to a
multiple of the window, and every odd block is shifted by ``window_size // 2`` whatever the
feature-map size. (Image-classification code instead shrinks the window and drops the shift when a
map is no larger than the window; at 512×512 inputs and above the two agree.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gmmseg.backbones._common import Backbone, DropPath, check_image, drop_path_rates

__all__ = ["SwinConfig", "SwinTransformer", "swin_base", "swin_small", "swin_tiny"]


@dataclass(frozen=True)
class SwinConfig:
    """Architecture of a Swin Transformer.

    Attributes:
        embed_dim: channels of the first stage (doubled by each patch merging).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the square attention windows.
        mlp_ratio: hidden width of the MLP relative to the stage width.
        patch_size: side of the non-overlapping patch embedding.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    mlp_ratio: int = 4
    patch_size: int = 4


SWIN_CONFIGS: dict[str, SwinConfig] = {
    "swin_tiny": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


def relative_position_index(window: int) -> Tensor:
    """Index into the (2w−1)² bias table for each pair of positions of a w×w window.

    Returns:
        (w², w²) int64: entry [i, j] = (Δrow + w − 1)·(2w − 1) + (Δcol + w − 1), where
        Δ = pos_i − pos_j.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Attention mask of shifted windows: 0 within a region, −100 across regions.

    After the cyclic shift, a window may hold pixels from up to four regions of the original map
    that were not neighbours; those pairs must not attend to each other.

    Returns:
        (nW, w², w²) float mask for the nW = (height/w)·(width/w) windows of a padded map.
    """

    def regions(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    label = regions(height)[:, None] * 3 + regions(width)[None, :]
    win = rearrange(label, "(h p) (w q) -> (h w) (p q)", p=window, q=window)
    diff = win[:, :, None] != win[:, None, :]
    return diff.float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias per head."""

    relative_position_index: Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Attend within windows.

        Args:
            x: (B·nW, w², dim) window tokens.
            mask: (nW, w², w²) additive mask or None.

        Returns:
            (B·nW, w², dim).
        """
        n = self.window * self.window
        # Three projections with slices of the fused qkv weight (the checkpoints' layout) rather
        # than one (…, 3·dim) output split afterwards: the same products, as Hugging Face's
        # separate query / key / value layers compute them, and no (3, …) gradient to assemble.
        weights = self.qkv.weight.chunk(3)
        biases = self.qkv.bias.chunk(3)
        q, k, v = (
            rearrange(F.linear(x, wt, b), "m n (k d) -> m k n d", k=self.num_heads)
            for wt, b in zip(weights, biases, strict=True)
        )
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn_mask = rearrange(bias, "(i j) k -> 1 k i j", i=n, j=n).to(x.dtype)
        if mask is not None:
            # (B·nW, 1, n, n) + (1, k, n, n): a 4-d mask keeps SDPA on its fused CPU kernel.
            # The shift mask is repeated over the batch before the add (it needs no gradient),
            # so that the sum is the only (B·nW, k, n, n) tensor, forward and backward.
            nw = mask.shape[0]
            batch_mask = mask.to(x.dtype).repeat(x.shape[0] // nw, 1, 1)[:, None]
            attn_mask = batch_mask + attn_mask
        if torch.is_grad_enabled() and attn_mask.requires_grad:
            # SDPA's fused CPU kernel has no gradient for the mask, so SDPA would fall back to
            # its math path, which also scales q and k separately and checks every row for
            # being fully masked (isneginf/all/where), never the case here. Written out:
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
            scores += attn_mask  # in place: the matmul's backward does not need its output
            out = torch.matmul(scores.softmax(dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y: Tensor = self.proj(rearrange(out, "m k n d -> m n (k d)"))
        return y


class SwinMLP(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) → (..., dim)."""
        y: Tensor = self.fc2(self.act(self.fc1(x)))
        return y


class SwinBlock(nn.Module):
    """(Shifted-)window attention block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: int, drop_path: float
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMLP(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, dim) → (B, H, W, dim)."""
        h, w = x.shape[1:3]
        ws = self.window
        y = self.norm1(x)
        if h % ws or w % ws:
            y = F.pad(y, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = y.shape[1:3]
        mask = None
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_mask(hp, wp, ws, self.shift, x.device)
        win = rearrange(y, "b (h p) (w q) c -> (b h w) (p q) c", p=ws, q=ws)
        win = self.attn(win, mask)
        y = rearrange(win, "(b h w) (p q) c -> b (h p) (w q) c", h=hp // ws, w=wp // ws, p=ws)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if hp != h or wp != w:
            y = y[:, :h, :w].contiguous()
        x = x + self.drop_path(y)
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class PatchMerging(nn.Module):
    """2×2 neighbourhood concatenation (4·C) → LayerNorm → Linear to 2·C; pads odd sizes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, 2C)."""
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Channel blocks ordered (row, col) = (0, 0), (1, 0), (0, 1), (1, 1), as the original.
        y = rearrange(x, "b (h p) (w q) c -> b h w (q p c)", p=2, q=2)
        out: Tensor = self.reduction(self.norm(y))
        return out


class SwinStage(nn.Module):
    """Blocks alternating shift 0 and ``window // 2``; optional patch merging afterwards."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: int,
        drop_paths: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, mlp_ratio, dp)
            for j, dp in enumerate(drop_paths[:depth])
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, dim) → (B, H, W, dim), before patch merging."""
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping p×p convolution (input padded to a multiple of p) + LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, ⌈H/p⌉, ⌈W/p⌉, dim)."""
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        y: Tensor = self.norm(rearrange(self.proj(x), "b c h w -> b h w c"))
        return y


class SwinTransformer(Backbone):
    """Swin Transformer backbone returning its four normalised stage outputs.

    Args:
        config: architecture (see :data:`SWIN_CONFIGS`).
        drop_path_rate: stochastic-depth rate of the last block, increasing linearly from 0
            (0.3 in mmsegmentation's UPerNet-Swin configurations).
        in_channels: channels of the input image.

    Attributes:
        out_channels: (C, 2C, 4C, 8C) for ``C = config.embed_dim``.
        strides: (4, 8, 16, 32).

    Example:
        ```python
        net = swin_tiny().eval()
        feats = net(torch.zeros(1, 3, 64, 64))
        # shapes (1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)
        ```
    """

    def __init__(
        self, config: SwinConfig, drop_path_rate: float = 0.3, in_channels: int = 3
    ) -> None:
        super().__init__()
        if len(config.depths) != len(config.num_heads):
            raise ValueError(
                f"config.depths and config.num_heads must have equal lengths, got "
                f"{config.depths} and {config.num_heads}"
            )
        self.config = config
        self.in_channels = in_channels
        n = len(config.depths)
        dims = [config.embed_dim * 2**i for i in range(n)]
        rates = drop_path_rates(drop_path_rate, config.depths)
        self.patch_embed = PatchEmbed(in_channels, config.embed_dim, config.patch_size)
        self.stages = nn.ModuleList(
            SwinStage(
                dims[i],
                config.depths[i],
                config.num_heads[i],
                config.window_size,
                config.mlp_ratio,
                rates[i],
                downsample=i < n - 1,
            )
            for i in range(n)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.out_channels = tuple(dims)
        self.strides = tuple(config.patch_size * 2**i for i in range(n))
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the four normalised stage outputs.

        Args:
            x: (B, 3, H, W) float images.

        Returns:
            Four tensors (B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉) with C_i = ``out_channels[i]`` and
            s_i = ``strides[i]``, in channels-last memory format (views of the stage tokens,
            no copy).
        """
        check_image(x, self.in_channels)
        y: Tensor = self.patch_embed(x)
        feats: list[Tensor] = []
        for stage, norm in zip(self.stages, self.norms, strict=True):
            y = stage(y)
            feats.append(rearrange(norm(y), "b h w c -> b c h w"))
            down = stage.downsample
            if isinstance(down, PatchMerging):
                y = down(y)
        return feats


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _swin(name: str, window_size: int, drop_path_rate: float, in_channels: int) -> SwinTransformer:
    base = SWIN_CONFIGS[name]
    config = SwinConfig(base.embed_dim, base.depths, base.num_heads, window_size)
    return SwinTransformer(config, drop_path_rate, in_channels)


def swin_tiny(
    window_size: int = 7, drop_path_rate: float = 0.3, in_channels: int = 3
) -> SwinTransformer:
    """Swin-T: C = 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); 27.5M parameters."""
    return _swin("swin_tiny", window_size, drop_path_rate, in_channels)


def swin_small(
    window_size: int = 7, drop_path_rate: float = 0.3, in_channels: int = 3
) -> SwinTransformer:
    """Swin-S: C = 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24); 48.8M parameters."""
    return _swin("swin_small", window_size, drop_path_rate, in_channels)


def swin_base(
    window_size: int = 7, drop_path_rate: float = 0.3, in_channels: int = 3
) -> SwinTransformer:
    """Swin-B: C = 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32); 86.7M parameters."""
    return _swin("swin_base", window_size, drop_path_rate, in_channels)
