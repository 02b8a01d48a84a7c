"""The SiT backbone: a DiT-style transformer with adaLN-Zero conditioning on time and class.

The whole network is in this file, in reading order: embedding layers, the transformer block and
final layer, the model, the fixed 2D sin-cos position embedding, and the size table.

Parameter names and shapes are those of the official SiT and DiT checkpoints, so their state dicts
load with ``load_state_dict`` unchanged. The model is called as ``model(x, t, y)`` with ``x`` of
shape (B, C, H, W), ``t`` a float tensor of shape (B,) in [0, 1] (0 = noise, 1 = data) and ``y``
integer class labels of shape (B,) (``None``, or the label ``num_classes``, means "no class").
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of token features x (B, N, D) by per-sample shift and scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                      Embedding layers for time and class                      #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Embeds continuous time t into a vector: sinusoids of 256 frequencies, then a 2-layer MLP.

    The sinusoidal features are [cos(t f_i), sin(t f_i)] with f_i = exp(-ln(10000) i / 128),
    i = 0..127, as in the official code, so pretrained weights see the features they were trained on.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        # Built on the fly in float32 (128 numbers): a buffer would be cast along with the model to bf16.
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_embedding_size % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t).to(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)


class LabelEmbedder(nn.Module):
    """Embeds class labels; row ``num_classes`` of the table is the null class used for guidance.

    During training each label is replaced by the null class with probability ``dropout_prob``
    (classifier-free guidance dropout).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """Splits an image into non-overlapping p x p patches and projects each to a token."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


#################################################################################
#                                 Core SiT Model                                #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through PyTorch's SDPA kernel."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size, bias=True)
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the conditioning c (adaLN-Zero).

    x = x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
    with the six modulation vectors a linear function of SiLU(c), initialised to zero.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Modulated LayerNorm and a linear map from each token to its p x p x C_out patch."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """Scalable Interpolant Transformer.

    Args:
        input_size: height and width of the (latent) image; must be divisible by ``patch_size``.
        patch_size: side of the square patches that become tokens.
        in_channels: channels of the input (4 for Stable Diffusion VAE latents).
        hidden_size, depth, num_heads, mlp_ratio: transformer width, number of blocks, heads, MLP ratio.
        class_dropout_prob: probability of replacing a label by the null class while training.
        num_classes: number of classes; the label table has one more row, the null class.
            With ``num_classes=0`` the model is unconditional (every input gets the null class).
        learn_sigma: keep the official checkpoints' extra ``in_channels`` output channels (their
            learned variance); they are computed but dropped from the output.
        mean_flow: also condition on a second time r >= t, the end of the jump of a mean-flow model
            (``transport.meanflow``): ``r_embedder`` embeds the interval r - t like t (Geng et al.
            2025 found (t, t - r) works well in their time), and its embedding is added to t's. Off,
            the model and its state dict are those of an ordinary SiT.
        dmf_depth: the other form of the second time, Decoupled MeanFlow's (Lee, Yu, Shin 2025, their
            ``DMFT``): the first ``dmf_depth`` blocks are conditioned on t, the remaining blocks and the
            final layer on r, both through the one ``t_embedder`` (plus the label), so the state dict is
            an ordinary SiT's and a trained SiT fed r = t computes what it computed before, bit for
            bit. ``None``: off; 0 .. depth (DMF-XL/2 uses 20 of 28). Not in the weights: a run records it.
        omega_input: condition on the guidance scale omega >= 1 of improved MeanFlow (Geng et al.
            2025, iMF): ``omega_embedder`` embeds 1 - 1/omega (0 for omega = 1) like a time, added to
            the label's embedding, so one model samples at any omega with one evaluation.
        velocity_head_depth: iMF's auxiliary velocity head: ``velocity_blocks`` (k blocks) and
            ``velocity_final_layer`` branch off after block depth - k and predict the instantaneous
            velocity v(x, t); its blocks are conditioned on t, the label and omega, not on r (the trunk
            is shared: with ``dmf_depth`` >= depth - k no block before the branch sees r either).
            ``forward(..., with_velocity=True)`` returns [u, v] along the channels. Used by the loss.
        projector_dims: one MLP projector per width, ``projectors.i`` (REPA's layout): hidden ->
            ``projector_hidden`` -> ``projector_hidden`` -> width, SiLU between. Used only by a
            training loss on a block's tokens (``training.losses.AlignmentLoss``); never by forward.

    Setting the attribute ``grad_checkpointing = True`` keeps only each block's input while
    gradients are recorded and recomputes the block in the backward pass: the same outputs and
    gradients, activation memory of one block instead of ``depth``, one more forward pass of
    compute. It is not a parameter, so state dicts are unchanged.

    Example:
        >>> model = SiT_models["SiT-S/2"](input_size=32, num_classes=1000)
        >>> out = model(torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([1, 2]))  # (2, 4, 32, 32)
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        projector_dims: Sequence[int] = (),
        projector_hidden: int = 2048,
        mean_flow: bool = False,
        dmf_depth: int | None = None,
        omega_input: bool = False,
        velocity_head_depth: int = 0,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if dmf_depth is not None and (mean_flow or not 0 <= dmf_depth <= depth):
            raise ValueError(f"dmf_depth={dmf_depth}: pass 0..{depth} blocks, and not together with mean_flow "
                             "(two forms of the second time)")
        if not 0 <= velocity_head_depth <= depth:
            raise ValueError(f"velocity_head_depth={velocity_head_depth}: pass 0..{depth} blocks")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.grad_checkpointing = False

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.mean_flow = mean_flow
        if mean_flow:
            self.r_embedder = TimestepEmbedder(hidden_size)
        num_patches = (input_size // patch_size) ** 2
        # Fixed (not trained) sin-cos embedding; a parameter only because official checkpoints store it as one.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        # The few-step options' modules come after the backbone's, so that its initialisation draws first.
        self.dmf_depth, self.omega_input, self.velocity_head_depth = dmf_depth, omega_input, velocity_head_depth
        if omega_input:
            self.omega_embedder = TimestepEmbedder(hidden_size)
        if velocity_head_depth:
            self.velocity_blocks = nn.ModuleList(
                [SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(velocity_head_depth)])
            self.velocity_final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        if projector_dims:
            # Built after the backbone's init (with torch's default Linear init, as REPA), so that
            # the backbone starts from the same weights with or without them.
            self.projectors = nn.ModuleList([projector(hidden_size, projector_hidden, d) for d in projector_dims])

    def initialize_weights(self) -> None:
        """Every initialisation decision, in one place."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)

        grid_size = self.input_size // self.patch_size
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid_size)
        self.pos_embed.data.copy_(pos_embed.unsqueeze(0))

        # Patch embedding initialised like a linear layer (xavier over the flattened kernel).
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)

        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.mean_flow:
            nn.init.normal_(self.r_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.r_embedder.mlp[2].weight, std=0.02)
        if self.omega_input:
            nn.init.normal_(self.omega_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.omega_embedder.mlp[2].weight, std=0.02)

        # adaLN-Zero: every block starts as the identity and the output starts at zero.
        heads = [(self.blocks, self.final_layer)]
        if self.velocity_head_depth:
            heads.append((self.velocity_blocks, self.velocity_final_layer))
        for blocks, final_layer in heads:
            for block in blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(final_layer.adaLN_modulation[-1].bias)
            nn.init.zeros_(final_layer.linear.weight)
            nn.init.zeros_(final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image, patches laid out row by row."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, return_tokens: Sequence[int] = (),
        r: torch.Tensor | None = None, drop_labels: bool = True, omega: torch.Tensor | float | None = None,
        with_velocity: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Predict the model output (velocity, score or noise, per the transport) for x at times t.

        With ``return_tokens`` (block depths d in 1..depth), also return {d: the (B, N, hidden)
        tokens after the first d blocks}, e.g. for a loss on intermediate features; the output
        alone otherwise. A mean-flow model (``mean_flow`` or ``dmf_depth``) predicts the average
        velocity from t to ``r`` (shape (B,)); ``r=None`` is r = t, the instantaneous velocity.
        ``drop_labels=False`` skips the training-time label dropout (for a caller that dropped labels
        itself). ``omega``: the guidance scale of an ``omega_input`` model, (B,) or a number (None: 1).
        ``with_velocity``: also run the velocity head; the output is then [u, v] along the channels.
        """
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        for d in return_tokens:
            if not 1 <= d <= len(self.blocks):
                raise ValueError(f"return_tokens: depth {d} is outside 1..{len(self.blocks)}")
        if r is not None and not self.mean_flow and self.dmf_depth is None:
            raise ValueError("r is the second time of a mean-flow model; this SiT has none (mean_flow=False)")
        if omega is not None and not self.omega_input:
            raise ValueError("omega is an input of an omega_input model; this SiT has none")
        if with_velocity and not self.velocity_head_depth:
            raise ValueError("with_velocity needs a velocity head (velocity_head_depth > 0)")
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        label = self.y_embedder(y, self.training and drop_labels)
        if self.omega_input:
            omega = torch.as_tensor(1.0 if omega is None else omega, dtype=torch.float32, device=x.device)
            label = label + self.omega_embedder((1 - 1 / omega).expand(x.shape[0]))
        c = c_t = self.t_embedder(t) + label
        c_r = c
        if self.mean_flow:
            c = c_r = c + self.r_embedder(torch.zeros_like(t) if r is None else r - t)
        elif self.dmf_depth is not None and r is not None:
            c_r = self.t_embedder(r) + label
        trunk = len(self.blocks) - self.velocity_head_depth
        tokens, branch = {}, x  # branch: the tokens after the shared trunk, where the velocity head starts
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for depth, block in enumerate(self.blocks, start=1):
            cond = c_r if self.dmf_depth is not None and depth > self.dmf_depth else c
            x = self._block(block, x, cond, recompute)
            if depth in return_tokens:
                tokens[depth] = x
            if depth == trunk:
                branch = x
        out = self._head(self.final_layer, x, c_r)
        if with_velocity:
            for block in self.velocity_blocks:
                branch = self._block(block, branch, c_t, recompute)
            out = torch.cat([out, self._head(self.velocity_final_layer, branch, c_t)], dim=1)
        return (out, tokens) if return_tokens else out

    @staticmethod
    def _block(block: SiTBlock, x: torch.Tensor, c: torch.Tensor, recompute: bool) -> torch.Tensor:
        # Non-reentrant: works with torch.compile and DDP, and with inputs that need no grad.
        return checkpoint(block, x, c, use_reentrant=False) if recompute else block(x, c)

    def _head(self, final_layer: FinalLayer, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.unpatchify(final_layer(x, c))
        return x[:, : self.in_channels] if self.learn_sigma else x


def projector(hidden_size: int, projector_hidden: int, out_dim: int) -> nn.Sequential:
    """Three linear layers with SiLU between: SiT tokens -> an encoder's feature width."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_hidden), nn.SiLU(),
        nn.Linear(projector_hidden, projector_hidden), nn.SiLU(),
        nn.Linear(projector_hidden, out_dim),
    )


#################################################################################
#                          Fixed sin-cos position embedding                     #
#################################################################################


def get_1d_sincos_pos_embed(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[sin(pos * w_i), cos(pos * w_i)] with w_i = 10000^(-i / (embed_dim / 2)); shape (len(pos), embed_dim)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim {embed_dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0))
    out = positions.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """2D embedding of a grid_size x grid_size grid, (grid_size**2, embed_dim), rows then columns.

    The first half of each vector encodes the column index and the second half the row index,
    the layout the official checkpoints were trained with.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 4")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb_cols = get_1d_sincos_pos_embed(embed_dim // 2, cols)
    emb_rows = get_1d_sincos_pos_embed(embed_dim // 2, rows)
    return torch.cat([emb_cols, emb_rows], dim=1).float()


#################################################################################
#                                   SiT Configs                                 #
#################################################################################

# name -> (depth, hidden_size, num_heads); every size comes with patch sizes 2, 4 and 8, and 1 for latents
# that are already coarse (f16 autoencoders, RAE's 16 x 16 DINOv2 tokens: LightningDiT-XL/1's patch).
SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    # Not in the paper: a tiny size for CPU runs (the digits quickstart) and tests.
    "Ti": (4, 96, 4),
}


PATCH_SIZES = (1, 2, 4, 8)


def model_name(size: str, patch_size: int) -> str:
    """The name of a size and patch, e.g. ("XL", 2) -> "SiT-XL/2" (the keys of ``SiT_models``)."""
    return f"SiT-{size}/{patch_size}"


def model_shape(name: str) -> tuple[int, int, int, int]:
    """(depth, hidden_size, num_heads, patch_size) of a name in ``SiT_models``, e.g. "SiT-XL/2" -> (28, 1152, 16, 2)."""
    size, patch = name.removeprefix("SiT-").split("/")
    return (*SIZES[size], int(patch))


def _constructor(depth: int, hidden_size: int, num_heads: int, patch_size: int):
    def build(**kwargs) -> SiT:
        return SiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, **kwargs)

    return build


SiT_models: dict[str, Callable[..., SiT]] = {
    model_name(size, patch): _constructor(*SIZES[size], patch) for size in SIZES for patch in PATCH_SIZES
}
