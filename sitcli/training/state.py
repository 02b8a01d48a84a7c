"""What a training run carries besides its weights: the EMA update, the RNG streams, a stop request."""

from __future__ import annotations

import signal

import torch

from sitcli.distributed import Dist


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)


def rng_state(noise: torch.Generator, dist: Dist) -> dict[str, torch.Tensor]:
    """This rank's RNG states: the global CPU (and CUDA) generator, which the label dropout draws
    from, and ``noise``, which draws training times and noise."""
    states = {"global_cpu": torch.get_rng_state(), "noise": noise.get_state()}
    if dist.device.type == "cuda":
        states["global_cuda"] = torch.cuda.get_rng_state(dist.device)
    return states


def restore_rng_state(saved: dict[str, torch.Tensor], noise: torch.Generator, dist: Dist) -> None:
    """Put back this rank's states from a checkpoint's ``{name}.rank{r}`` tensors."""
    suffix = f".rank{dist.rank}"
    if f"noise{suffix}" not in saved or f"noise.rank{dist.world_size}" in saved:
        # Another number of ranks than when saved: data order is unchanged, noise streams restart.
        if dist.is_main:
            print("note: resuming on a different number of ranks; training noise is re-seeded (data order is kept)")
        return
    torch.set_rng_state(saved[f"global_cpu{suffix}"])
    noise.set_state(saved[f"noise{suffix}"])
    if dist.device.type == "cuda" and f"global_cuda{suffix}" in saved:
        torch.cuda.set_rng_state(saved[f"global_cuda{suffix}"], dist.device)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to save and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. SIGINT under nohup: the caller chose to ignore it
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
