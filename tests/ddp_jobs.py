"""Run by tests/test_train_ddp.py under `torchrun --nproc_per_node=2`: several jobs in one launch.

The process group is created here once, so the jobs join it instead of creating their own.
"""

import sys

import copy

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sitcli.config import TrainConfig

from sitcli.sample_config import SampleConfig
from sitcli.encoders import load_encoder
from sitcli.models import SiT
from sitcli.sample import sample
from sitcli.training import resume_config, train
from sitcli.training.losses import AlignmentLoss, StepBatch


def main(root: str, *train_flags: str) -> None:
    dist.init_process_group("gloo")
    settings = dict(flag.split("=", 1) for flag in train_flags)
    settings = {k: int(v) if v.isdigit() else (float(v) if "." in v or "e-" in v else v) for k, v in settings.items()}
    train(TrainConfig(out=f"{root}/halves", **{**settings, "steps": 2}), progress=False)
    train(resume_config(f"{root}/halves", {"steps": 4}), resume=True, progress=False)
    sample(SampleConfig(ckpt=f"{root}/straight", out=f"{root}/samples", num=5, batch_size=2, steps=3), progress=False)
    dist.destroy_process_group()


def repa(root: str, encoder: str, *train_flags: str) -> None:
    """REPA on two ranks: 2 steps straight and 1 + resume + 1, then the projectors' DDP gradients."""
    dist.init_process_group("gloo")
    settings = dict(flag.split("=", 1) for flag in train_flags)
    settings = {k: int(v) if v.isdigit() else (float(v) if "." in v or "e-" in v else v) for k, v in settings.items()}
    settings.update(repa_encoder=[encoder], repa_projector_dim=16, repa_depth=2)
    train(TrainConfig(out=f"{root}/straight", **{**settings, "steps": 2}), progress=False)
    train(TrainConfig(out=f"{root}/halves", **{**settings, "steps": 1}), progress=False)
    train(resume_config(f"{root}/halves", {"steps": 2}), resume=True, progress=False)
    check_projector_gradients_are_averaged(load_encoder(encoder))
    dist.destroy_process_group()


def meanflow(root: str, *train_flags: str) -> None:
    """The mean-flow objective on two ranks: 4 steps straight, and 2 + resume + 2."""
    dist.init_process_group("gloo")
    settings = dict(flag.split("=", 1) for flag in train_flags)
    settings = {k: int(v) if v.isdigit() else (float(v) if "." in v or "e-" in v else v) for k, v in settings.items()}
    train(TrainConfig(out=f"{root}/straight", **{**settings, "steps": 4}), progress=False)
    train(TrainConfig(out=f"{root}/halves", **{**settings, "steps": 2}), progress=False)
    train(resume_config(f"{root}/halves", {"steps": 4}), resume=True, progress=False)
    dist.destroy_process_group()


def check_projector_gradients_are_averaged(encoder) -> None:
    """The projectors live in the SiT that DDP wraps but run outside its forward: their gradients
    must still be the mean over ranks, i.e. those of the whole batch on one process."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = SiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
                class_dropout_prob=0.0, projector_dims=(encoder.width,), projector_hidden=16)
    alone = copy.deepcopy(model)

    def loss(net, projectors, x, t, y):
        out, tokens = net(x, t, y, return_tokens=(1,))
        term = AlignmentLoss([encoder], projectors, depth=1, weight=1.0, grid=4)
        return term(StepBatch(x, x, t, x, y, out, tokens)).mean() + out.square().mean()

    torch.manual_seed(1)  # the same global batch on every rank
    x, t, y = torch.rand(2 * world, 1, 8, 8) * 2 - 1, torch.rand(2 * world), torch.arange(2 * world) % 10
    mine = slice(2 * rank, 2 * rank + 2)
    ddp = DistributedDataParallel(model)  # held: its reducer all-reduces during backward
    loss(ddp, model.projectors, x[mine], t[mine], y[mine]).backward()
    loss(alone, alone.projectors, x, t, y).backward()
    for got, want in zip(model.projectors.parameters(), alone.projectors.parameters()):
        assert torch.allclose(got.grad, want.grad, rtol=1e-4, atol=1e-7), ("projector gradients were not all-reduced",
                                                                            (got.grad - want.grad).abs().max())
    local = copy.deepcopy(alone)
    local.zero_grad()
    loss(local, local.projectors, x[mine], t[mine], y[mine]).backward()
    # One rank's half batch alone gives other gradients, so the check above can fail.
    assert not torch.allclose(local.projectors[0][0].weight.grad, alone.projectors[0][0].weight.grad)


def cli(commands_file: str) -> None:
    """The `sit` commands in ``commands_file`` (one JSON list of words per line), one after the other through
    the CLI on every rank of one launch, which joins the process group created here."""
    import json

    from sitcli.cli import app

    dist.init_process_group("gloo")
    for line in open(commands_file).read().splitlines():
        words = json.loads(line)
        try:
            app(words)
        except SystemExit as exit:
            if exit.code not in (0, None):
                raise RuntimeError(f"`sit {' '.join(words)}` exited with status {exit.code}") from None
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "repa":
        repa(*sys.argv[2:])
    elif sys.argv[1] == "cli":
        cli(*sys.argv[2:])
    elif sys.argv[1] == "meanflow":
        meanflow(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
