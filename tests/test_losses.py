"""sitcli/training/losses.py: the loss as named terms, fed with what the step computed."""


import pytest
import torch

from sitcli.config import TrainConfig
from sitcli.models import SiT
from sitcli.training import losses, train
from sitcli.training.losses import LossTerm, RegressionLoss, StepBatch, step_losses
from sitcli.training.reports import read_log
from sitcli.transport import Transport
from helpers import random_sit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> SiT:
    return random_sit(0, in_channels=1, depth=3, num_classes=4).train()


class TokenNorm(LossTerm):
    """A stand-in alignment term: mean squared norm of the tokens after block 2."""

    name, weight, token_depths = "tokens", 0.5, (2,)

    def __init__(self):
        self.seen: list[StepBatch] = []

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        self.seen.append(batch)
        return batch.tokens[2].pow(2).mean(dim=(1, 2))


@pytest.mark.parametrize(
    "interpolant, prediction, weight", [("linear", "velocity", None), ("vp", "score", "likelihood")]
)
def test_the_regression_term_is_the_transport_loss_bit_for_bit(interpolant, prediction, weight):
    model, transport = tiny_model(), Transport(interpolant, prediction, weight)
    x1, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    torch.manual_seed(1)
    expected = transport.training_loss(model, x1, {"y": y}, generator=torch.Generator().manual_seed(5)).mean()
    torch.manual_seed(1)  # the label dropout draws from the global generator
    total, parts = step_losses(model, transport, [RegressionLoss(transport)], x1, y, torch.Generator().manual_seed(5))
    assert torch.equal(total, expected) and list(parts) == ["regression"] and torch.equal(parts["regression"], expected)


def test_a_term_gets_the_tokens_it_asks_for_and_is_weighted_into_the_total():
    model, transport = tiny_model(), Transport()
    x1, y = torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))
    term = TokenNorm()
    total, parts = step_losses(
        model, transport, [RegressionLoss(transport), term], x1, y, torch.Generator().manual_seed(0)
    )
    batch = term.seen[0]
    assert set(batch.tokens) == {2} and batch.tokens[2].shape == (4, 16, 32)
    assert torch.equal(batch.x_t, transport.interpolant.interpolate(x1, batch.noise, batch.t))
    assert torch.allclose(total, parts["regression"] + 0.5 * parts["tokens"])
    total.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_a_run_with_two_terms_logs_each(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "sitcli.training.prepare.loss_terms",
        lambda cfg, transport, *model_and_encoders: [RegressionLoss(transport), TokenNorm()],
    )
    cfg = TrainConfig(
        data="digits", out=str(tmp_path / "run"), model="SiT-Ti/4", batch_size=16, steps=4, log_every=2, sample_every=0
    )
    train(cfg, progress=False)
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert header == "step,loss,loss_regression,loss_tokens,grad_norm,lr,steps_per_s,images_per_s,elapsed_s"
    rows = read_log(tmp_path / "run" / "log.csv")
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:  # each row holds means over the same steps, so the total is their weighted sum
        assert r["loss"] == pytest.approx(r["loss_regression"] + 0.5 * r["loss_tokens"], rel=1e-4)


def test_the_default_terms_are_the_regression_loss_alone():
    terms = losses.loss_terms(TrainConfig(), Transport())
    assert [type(t) for t in terms] == [RegressionLoss] and terms[0].weight == 1
