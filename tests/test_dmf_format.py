"""sitcli/formats/dmf.py: Decoupled MeanFlow's .pt files read into sit's time, against a stand-in of their DMFT.

``DMFTStandIn`` has DMFT's layout as read in kyungmnlee/dmf (``models/dmft.py``, ``models/layers.py``): the DiT
modules under their names (the same as sit's, whose blocks are used here), a label table with a null row, no
learned-sigma channels, and ``logvar_linear`` (256 -> 1). Its forward is written here in DMF's own time: s = 1
noise, the first ``dmf_depth`` blocks conditioned on s_t, the rest and the final layer on s_r, predicting
u_dmf = (x_{s_r} - x_{s_t}) / (s_r - s_t); their Euler sampler steps x <- x + (s_next - s) u_dmf(x, s, s_next).
"""

import argparse

import pytest
import torch
from torch import nn

from sitcli.convert import ConvertConfig, convert
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.models import FinalLayer, PatchEmbed, SiTBlock, TimestepEmbedder, get_2d_sincos_pos_embed
from sitcli.transport import sample_meanflow

pytestmark = pytest.mark.usefixtures("one_thread")
HIDDEN, DEPTH, HEADS, PATCH, CHANNELS, SIZE, CLASSES = 96, 4, 4, 2, 4, 8, 5  # SiT-Ti/2's layout


class DMFTStandIn(nn.Module):
    def __init__(self, dmf_depth: int, qk_norm: bool = False):
        super().__init__()
        self.dmf_depth = dmf_depth
        self.x_embedder = PatchEmbed(PATCH, CHANNELS, HIDDEN)
        self.t_embedder = TimestepEmbedder(HIDDEN)
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(CLASSES + 1, HIDDEN)  # use_cfg_embedding: a null row
        self.pos_embed = nn.Parameter(get_2d_sincos_pos_embed(HIDDEN, SIZE // PATCH)[None], requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(HIDDEN, HEADS) for _ in range(DEPTH)])
        self.final_layer = FinalLayer(HIDDEN, PATCH, CHANNELS)
        self.logvar_linear = nn.Linear(256, 1)
        if qk_norm:  # their RMSNorm's scale per head dimension
            for block in self.blocks:
                block.attn.q_norm, block.attn.k_norm = nn.Module(), nn.Module()
                block.attn.q_norm.scale = nn.Parameter(torch.ones(HIDDEN // HEADS))
                block.attn.k_norm.scale = nn.Parameter(torch.ones(HIDDEN // HEADS))
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name != "pos_embed":
                    p.normal_(0, 0.2)

    def forward(self, x, s_t, s_r, y):
        tokens = self.x_embedder(x) + self.pos_embed
        label = self.y_embedder.embedding_table(y)
        c_t, c_r = self.t_embedder(s_t) + label, self.t_embedder(s_r) + label
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, c_t if i < self.dmf_depth else c_r)
        out = self.final_layer(tokens, c_r)  # (B, N, p*p*C) -> (B, C, H, W), patches row by row
        side = SIZE // PATCH
        out = out.reshape(x.shape[0], side, side, PATCH, PATCH, CHANNELS)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(x.shape[0], CHANNELS, SIZE, SIZE)


def dmf_euler(u, x, y, steps):
    """DMF's Euler sampler from its equation, in its time (s from 1 to 0), in float64 between steps."""
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    x = x.double()
    for s_cur, s_next in zip(s[:-1], s[1:]):
        with torch.no_grad():
            d = u(x.float(), torch.full((x.shape[0],), float(s_cur)), torch.full((x.shape[0],), float(s_next)), y)
        x = x + (s_next - s_cur) * d.double()
    return x


def test_a_raw_dmf_file_is_minus_u_in_flipped_time_and_samples_like_dmfs_euler(tmp_path):
    dmft = DMFTStandIn(dmf_depth=3).eval()
    torch.save(dmft.state_dict(), tmp_path / "dmf.pt")  # their released weights: a raw state dict
    with pytest.raises(InputError, match="pass --dmf-depth N"):
        load_model(tmp_path / "dmf.pt")
    loaded = load_model(tmp_path / "dmf.pt", dmf_depth=3)
    assert loaded.checkpoint.format == "dmf" and loaded.transport.interpolant.name == "linear"
    assert loaded.checkpoint.arch["dmf_depth"] == 3 and not loaded.checkpoint.arch["learn_sigma"]
    assert not any(k.startswith("logvar_linear") for k in loaded.model.state_dict())
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, CHANNELS, SIZE, SIZE, generator=g), torch.tensor([0.0, 0.2, 0.5, 0.7])
    r, y = torch.tensor([0.3, 0.2, 0.9, 1.0]), torch.tensor([0, 2, 4, 5])
    with torch.no_grad():
        got, want = loaded.model(x, t, y, r=r), -dmft(x, 1 - t, 1 - r, y)
    # float32 round-off: the folded time features against the features of 1 - t computed in float32
    assert (got - want).abs().max() < 1e-5 * want.abs().max(), float((got - want).abs().max() / want.abs().max())
    assert (want - -dmft(x, 1 - t, 1 - t, y)).abs().max() > 1e-2  # r matters: the last block and layer see it
    jumps, nfe = sample_meanflow(loaded.model, x, 2, model_kwargs={"y": y})
    assert nfe == 2
    euler = dmf_euler(dmft, x, y, 2)
    # the float32 round-off of the first jump, carried through the second by a random network of large gain
    assert (jumps.double() - euler).abs().max() < 1e-4 * euler.abs().max()


def test_a_dmf_training_checkpoint_records_its_depth_and_converts_to_a_run_that_samples(tmp_path):
    dmft = DMFTStandIn(dmf_depth=2)
    args = argparse.Namespace(model="DMFT-Ti/2", dmf_depth=2, path_type="linear", resolution=64, qk_norm=False)
    state = dmft.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "args": args, "steps": 10}, tmp_path / "0000010.pt")
    loaded = load_model(tmp_path / "0000010.pt")
    assert loaded.checkpoint.arch["dmf_depth"] == 2 and loaded.config.image_size == 64
    with pytest.raises(InputError, match="records dmf_depth=2: drop --dmf-depth 3"):
        load_model(tmp_path / "0000010.pt", dmf_depth=3)
    convert(ConvertConfig(tmp_path / "0000010.pt", tmp_path / "run", dst_format="sit"))
    run = load_model(tmp_path / "run")
    assert run.config.objective == "dmf" and run.config.dmf_depth == 2 and run.config.model == "SiT-Ti/2"
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(InputError, match="converts --to sit only"):
        convert(ConvertConfig(tmp_path / "0000010.pt", tmp_path / "SiT-back.pt"))


def test_dmfs_qk_norm_models_are_refused_naming_why(tmp_path):
    torch.save(DMFTStandIn(dmf_depth=2, qk_norm=True).state_dict(), tmp_path / "dmf512.pt")
    with pytest.raises(InputError, match="uses DMF's qk-norm .* only their models trained without --qk-norm"):
        load_model(tmp_path / "dmf512.pt", dmf_depth=2)
