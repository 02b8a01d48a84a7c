"""Run by tests/test_train_ddp.py under `torchrun --nproc_per_node=2`: several jobs in one launch.

The process group is created here once, so the jobs join it instead of creating their own.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch.distributed as dist

from sitcli.config import SampleConfig, TrainConfig
from sitcli.sample import sample
from sitcli.training import resume_config, train


def main(root: str, *train_flags: str) -> None:
    dist.init_process_group("gloo")
    settings = dict(flag.split("=", 1) for flag in train_flags)
    settings = {k: int(v) if v.isdigit() else (float(v) if "." in v or "e-" in v else v) for k, v in settings.items()}
    train(TrainConfig(out=f"{root}/halves", **{**settings, "steps": 2}), progress=False)
    train(resume_config(f"{root}/halves", {"steps": 4}), resume=True, progress=False)
    sample(SampleConfig(ckpt=f"{root}/straight", out=f"{root}/samples", num=5, batch_size=2, steps=3), progress=False)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
