"""DiT^DH: a SiT trunk with a wide, shallow head (RAE's ``DiTwDDTHead``, Zheng et al. 2025).

The network of bytetriper/RAE's ``src/stage2/models/DDT.py`` (its LightningDiT-style blocks from
``model_utils.py``), with its parameter and buffer names, so RAE's stage-2 checkpoints load with
``strict=True`` and a model trained here loads in RAE's code. Patch size 1 (RAE's; their code needs
it), latents x of shape (B, C, H, W), in RAE's time tau (tau = 0 data, tau = 1 noise) and labels y:

    e = t_embedder(tau)                       Gaussian Fourier features [sin 2 pi W tau, cos 2 pi W tau], W ~ N(0, 1)
                                              fixed (256 of them), then a 2-layer SiLU MLP
    c = SiLU(e + y_embedder(y))
    s = s_embedder(x) + pos_embed             trunk: ``depth`` blocks of width ``hidden_size``, conditioned on c
    s = block_i(s, c)                         (the same c for every token)
    s = s_projector(SiLU(e + s))              per-token condition of the head (a linear map to ``head_width``)
    h = x_embedder(x)                         head: ``head_depth`` blocks of width ``head_width``, conditioned
    h = block_j(h, s)                         token by token on s; no absolute position embedding
    out = final_layer(h, s)                   -> (B, C, H, W)

A block is adaLN-Zero around attention and an MLP, as SiT's, with RAE's choices: RMSNorm (eps 1e-6,
with weight) instead of LayerNorm, a SwiGLU MLP of width int(2/3 * 4 * D), 2D rotary position
embedding on queries and keys (EVA's ``VisionRotaryEmbeddingFast``: half of each head's channels
rotate with the row index, half with the column, frequencies 10000^(-2i/(head_dim/2)), pairs of
adjacent channels), and the block's modulation a linear map of SiLU of its condition (so the trunk's
condition is SiLU(SiLU(e + y)), as in RAE's code).

Time convention. The network is RAE's function of RAE's time, and predicts RAE's velocity
d x_tau / d tau = eps - x (linear path x_tau = (1 - tau) x + tau eps). ``forward`` presents it in
sit's convention (t = 0 noise, t = 1 data, velocity x - eps): forward(x, t, y) = -net(x, 1 - t, y).
The weights are the same either way, so nothing is converted when checkpoints cross between the two
codes. ``forward_native`` is RAE's forward.

Sizes (trunk depth, width, heads; head depth, width, heads): DiTDH-XL 28, 1152, 16; 2, 2048, 16 and
DiTDH-S 12, 384, 6; 2, 2048, 16 (RAE's configs; ImageNet 256: 16 x 16 x 768 DINOv2-B latents).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sitcli.models import LabelEmbedder, PatchEmbed, get_2d_sincos_pos_embed


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) * (1 + scale) + shift, with scale and shift (B, 1, D) or per token (B, N, D)."""
    return x * (1 + scale) + shift if shift is not None else x * (1 + scale)


#################################################################################
#                        Embedding layers and position                          #
#################################################################################


class GaussianFourierEmbedding(nn.Module):
    """t -> MLP([sin(2 pi W t), cos(2 pi W t)]) with 256 fixed frequencies W ~ N(0, 1) (a parameter
    that is not trained: RAE's checkpoints store it as ``t_embedder.W``)."""

    def __init__(self, hidden_size: int, embedding_size: int = 256):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size), requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = t[:, None] * self.W[None] * 2 * math.pi
        return self.mlp(torch.cat([torch.sin(f), torch.cos(f)], dim=-1).to(self.mlp[0].weight.dtype))


class VisionRoPE(nn.Module):
    """2D rotary embedding of a grid x grid token grid for heads of ``head_dim`` channels.

    Channel pairs (2i, 2i + 1) of the first half rotate by row * f_i, of the second half by column * f_i,
    f_i = 10000^(-2i / (head_dim / 2)); the tables are buffers (RAE's checkpoints store them).
    """

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D rotary embedding needs a head width divisible by 4, got {head_dim}")
        dim = head_dim // 2
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        positions = torch.arange(grid) / grid * grid  # RAE's float32 positions (i / L * L), bit for bit
        angles = (positions[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, dim), pairs equal
        rows = angles[:, None, :].expand(grid, grid, dim)
        cols = angles[None, :, :].expand(grid, grid, dim)
        table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, heads, N, head_dim) rotated: x cos + rotate_half(x) sin, rotate_half (a, b) -> (-b, a)."""
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.freqs_cos + rotated * self.freqs_sin


#################################################################################
#                                  Core layers                                  #
#################################################################################


def _norm(width: int, rms: bool) -> nn.Module:
    return nn.RMSNorm(width, eps=1e-6) if rms else nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv), optional q/k norms and rotary embedding, via SDPA."""

    def __init__(self, width: int, heads: int, qk_norm: bool = False, rms: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        head_dim = width // heads
        qk = (lambda: nn.RMSNorm(head_dim, eps=1e-6)) if rms else (lambda: nn.LayerNorm(head_dim))
        self.q_norm = qk() if qk_norm else nn.Identity()
        self.k_norm = qk() if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: VisionRoPE | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class SwiGLU(nn.Module):
    """w3(SiLU(a) * b) with [a, b] = w12(x)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Mlp(nn.Module):
    """fc2(GELU_tanh(fc1(x))) (timm's Mlp names), when SwiGLU is off."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DDTBlock(nn.Module):
    """x = x + gate_a * Attn(modulate(norm1(x))); x = x + gate_m * MLP(modulate(norm2(x))), the six (four
    without shift) modulation vectors a linear map of SiLU(c), c (B, D) or per token (B, N, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, swiglu: bool = True,
                 rms: bool = True, wo_shift: bool = False):
        super().__init__()
        self.norm1, self.norm2 = _norm(width, rms), _norm(width, rms)
        self.attn = Attention(width, heads, qk_norm, rms)
        hidden = int(width * mlp_ratio)
        self.mlp = SwiGLU(width, int(2 / 3 * hidden)) if swiglu else Mlp(width, hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, (4 if wo_shift else 6) * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: VisionRoPE | None = None) -> torch.Tensor:
        m = self.adaLN_modulation(c if c.dim() == 3 else c[:, None])
        if self.wo_shift:
            (scale_a, gate_a, scale_m, gate_m), shift_a, shift_m = m.chunk(4, dim=-1), None, None
        else:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = m.chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """Modulated norm (no gate) and a linear map of each token to its p x p x C patch."""

    def __init__(self, width: int, out: int, rms: bool = True):
        super().__init__()
        self.norm_final = _norm(width, rms)
        self.linear = nn.Linear(width, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c if c.dim() == 3 else c[:, None]).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                 The DiT^DH model                              #
#################################################################################


class DiTwDDTHead(nn.Module):
    """A SiT trunk and a wide DDT head (see the module); called as ``model(x, t, y)`` in sit's time.

    Args:
        input_size: latent side (16 for DINOv2-B at 224 pixels).
        patch_size: 1 (the only size RAE's layout supports).
        in_channels: latent channels (768 for DINOv2-B).
        hidden_size, depth, num_heads: the trunk (RAE's hidden_size[0], depth[0], num_heads[0]).
        head_width, head_depth, head_heads: the head (RAE's hidden_size[1], depth[1], num_heads[1]).
        mlp_ratio, class_dropout_prob, num_classes: as SiT's (``num_classes=0``: unconditional).
        use_qknorm, use_swiglu, use_rope, use_rmsnorm, wo_shift, use_pos_embed: RAE's switches (its
            released models: False, True, True, True, False, True).

    Example:
        >>> model = DDT_models["DiTDH-XL"](input_size=16, in_channels=768)
        >>> v = model(torch.randn(2, 768, 16, 16), torch.rand(2), torch.tensor([1, 2]))   # (2, 768, 16, 16)
    """

    def __init__(
        self,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 768,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        head_width: int = 2048,
        head_depth: int = 2,
        head_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        wo_shift: bool = False,
        use_pos_embed: bool = True,
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError(f"DiT^DH takes patch size 1 (RAE's layout embeds C * p * p channels), got {patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.use_pos_embed, self.use_rope = use_pos_embed, use_rope
        self.grad_checkpointing = False
        self.x_embedder = PatchEmbed(1, in_channels, head_width)
        self.s_embedder = PatchEmbed(1, in_channels, hidden_size)
        self.s_projector = nn.Linear(hidden_size, head_width) if hidden_size != head_width else nn.Identity()
        self.t_embedder = GaussianFourierEmbedding(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.final_layer = FinalLayer(head_width, in_channels, use_rmsnorm)
        if use_pos_embed:
            # Fixed sin-cos; a parameter because RAE's checkpoints store it as one.
            self.pos_embed = nn.Parameter(torch.zeros(1, input_size * input_size, hidden_size), requires_grad=False)
        if use_rope:
            self.enc_feat_rope = VisionRoPE(hidden_size // num_heads, input_size)
            self.dec_feat_rope = VisionRoPE(head_width // head_heads, input_size)
        block = dict(mlp_ratio=mlp_ratio, qk_norm=use_qknorm, swiglu=use_swiglu, rms=use_rmsnorm, wo_shift=wo_shift)
        self.blocks = nn.ModuleList(
            [DDTBlock(hidden_size, num_heads, **block) for _ in range(depth)]
            + [DDTBlock(head_width, head_heads, **block) for _ in range(head_depth)]
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """RAE's choices: torch's default Linear init except where set here (no xavier pass)."""
        for embedder in (self.x_embedder, self.s_embedder):
            w = embedder.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.use_pos_embed:
            self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.input_size).unsqueeze(0))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _run(self, block: DDTBlock, x: torch.Tensor, c: torch.Tensor, rope: VisionRoPE | None) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, c, rope, use_reentrant=False)
        return block(x, c, rope)

    def forward_native(
        self, x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor, drop_labels: bool | None = None,
        return_tokens: Sequence[int] = (),
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """RAE's forward: RAE's velocity eps - x at RAE's time ``tau`` (1 = noise). Labels are dropped
        for guidance while training unless ``drop_labels`` is False."""
        e = self.t_embedder(tau)
        c = F.silu(e + self.y_embedder(y, self.training if drop_labels is None else self.training and drop_labels))
        s = self.s_embedder(x)
        if self.use_pos_embed:
            s = s + self.pos_embed.to(s.dtype)
        enc_rope, dec_rope = (self.enc_feat_rope, self.dec_feat_rope) if self.use_rope else (None, None)
        tokens = {}
        for d in range(self.depth):
            s = self._run(self.blocks[d], s, c, enc_rope)
            if d + 1 in return_tokens:
                tokens[d + 1] = s
        s = self.s_projector(F.silu(e[:, None] + s))
        h = self.x_embedder(x)
        for block in self.blocks[self.depth:]:
            h = self._run(block, h, s, dec_rope)
        out = self.final_layer(h, s)  # (B, N, C): patch size 1, so unpatchify is a transpose
        out = out.transpose(1, 2).reshape(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        return (out, tokens) if return_tokens else out

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, return_tokens: Sequence[int] = (),
        r: torch.Tensor | None = None, drop_labels: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """sit's velocity (x - eps) at sit's time t (0 = noise): -forward_native(x, 1 - t, y). With
        ``return_tokens`` (trunk depths 1..depth) also the trunk's tokens after those blocks."""
        if r is not None:
            raise ValueError("r is the second time of a mean-flow model; DiT^DH has none")
        for d in return_tokens:
            if not 1 <= d <= self.depth:
                raise ValueError(f"return_tokens: depth {d} is outside the trunk's 1..{self.depth}")
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        out = self.forward_native(x, 1 - t, y, drop_labels, return_tokens)
        if return_tokens:
            return -out[0], out[1]
        return -out


def from_rae_params(**params) -> DiTwDDTHead:
    """A model from the ``stage_2.params`` of an RAE config (hidden_size, depth, num_heads as [trunk, head])."""
    params = dict(params)
    width, depth, heads = params.pop("hidden_size"), params.pop("depth"), params.pop("num_heads", [16, 16])
    heads = [heads, heads] if isinstance(heads, int) else list(heads)
    patch = params.pop("patch_size", 1)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return DiTwDDTHead(patch_size=patch, hidden_size=width[0], depth=depth[0], num_heads=heads[0], head_width=width[1],
                       head_depth=depth[1], head_heads=heads[1], **params)


#################################################################################
#                                    Configs                                    #
#################################################################################

# name -> (depth, hidden_size, num_heads, head_depth, head_width, head_heads)
DDT_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "XL": (28, 1152, 16, 2, 2048, 16),
    "S": (12, 384, 6, 2, 2048, 16),
    # Not RAE's: a tiny size for CPU runs and tests.
    "Ti": (2, 64, 4, 1, 96, 4),
}


def _constructor(depth: int, hidden: int, heads: int, head_depth: int, head_width: int, head_heads: int):
    def build(**kwargs) -> DiTwDDTHead:
        shape = dict(depth=depth, hidden_size=hidden, num_heads=heads, head_depth=head_depth, head_width=head_width,
                     head_heads=head_heads)
        return DiTwDDTHead(**{**shape, **kwargs})

    return build


DDT_models: dict[str, Callable[..., DiTwDDTHead]] = {
    f"DiTDH-{size}": _constructor(*DDT_SIZES[size]) for size in DDT_SIZES
}
