"""What the model predicts, how one prediction converts to another, and the training loss.

A model evaluated at (x, t) predicts one of three equivalent quantities (x = x_t):

    velocity  v(x, t) = E[alpha'_t x1 + sigma'_t eps | x_t = x]
    noise     e(x, t) = E[eps | x_t = x]
    score     s(x, t) = grad log p_t(x) = -e(x, t) / sigma_t

and the posterior mean of the data is x1(x, t) = E[x1 | x_t = x]. Because x = alpha_t x1 + sigma_t eps
holds inside the expectation, any one determines the others (this module is the only place that
converts between them):

    from velocity:  e  = (alpha_t v - alpha'_t x) / D_t,    x1 = (sigma'_t x - sigma_t v) / D_t,
                    with D_t = alpha_t sigma'_t - sigma_t alpha'_t  (never 0 for our interpolants)
    from noise:     x1 = (x - sigma_t e) / alpha_t,         v = alpha'_t / alpha_t x - eta_t / sigma_t e
    from score:     e  = -sigma_t s

Training regresses the model output on its target for x1 ~ data, eps ~ N(0, I) and t in the
training interval. The error is measured in velocity space for velocity models and in noise space
for score and noise models (for score that is sigma_t^2 |s_theta - s|^2, denoising score matching,
as in the official code), then multiplied by a loss weight that changes the space it counts in:

    loss_weight   velocity model     score / noise model     meaning
    None          1                  1                        the model's own error
    "velocity"    1                  eta_t^2 / sigma_t^2      error of the implied velocity, |v_theta - v|^2
    "likelihood"  1 / eta_t          eta_t / sigma_t^2        eta_t |s_theta - s|^2, the likelihood bound
"""

from __future__ import annotations

from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant, expand_time

PREDICTIONS = ("velocity", "score", "noise")
LOSS_WEIGHTS = (None, "velocity", "likelihood")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise InputError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
    return prediction


def check_loss_weight(loss_weight: str | None) -> str | None:
    if loss_weight in (None, "none", "None"):
        return None
    if loss_weight not in LOSS_WEIGHTS:
        raise InputError(f"unknown loss weight {loss_weight!r}: choose none, velocity or likelihood")
    return loss_weight


def _coefficients(interpolant: Interpolant, t: torch.Tensor, x: torch.Tensor):
    t = expand_time(t, x)
    return t, interpolant.alpha(t), interpolant.sigma(t), interpolant.d_alpha(t), interpolant.d_sigma(t)


def predicted_noise(interpolant: Interpolant, prediction: str, output, x, t) -> torch.Tensor:
    """E[eps | x_t = x] implied by the model output."""
    if prediction == "noise":
        return output
    t, alpha, sigma, d_alpha, d_sigma = _coefficients(interpolant, t, x)
    if prediction == "score":
        return -sigma * output
    return (alpha * output - d_alpha * x) / (alpha * d_sigma - sigma * d_alpha)


def predicted_score(interpolant: Interpolant, prediction: str, output, x, t) -> torch.Tensor:
    """grad log p_t(x) implied by the model output (singular where sigma_t = 0)."""
    if prediction == "score":
        return output
    return -predicted_noise(interpolant, prediction, output, x, t) / interpolant.sigma(expand_time(t, x))


def predicted_velocity(interpolant: Interpolant, prediction: str, output, x, t) -> torch.Tensor:
    """The probability-flow velocity implied by the model output (singular where alpha_t = 0
    unless the model predicts velocity)."""
    if prediction == "velocity":
        return output
    noise = predicted_noise(interpolant, prediction, output, x, t)
    t = expand_time(t, x)
    return interpolant.d_log_alpha(t) * x - interpolant.eta(t) / interpolant.sigma(t) * noise


def predicted_data(interpolant: Interpolant, prediction: str, output, x, t) -> torch.Tensor:
    """E[x1 | x_t = x] implied by the model output (Tweedie's formula for score and noise models)."""
    t_, alpha, sigma, d_alpha, d_sigma = _coefficients(interpolant, t, x)
    if prediction == "velocity":
        return (d_sigma * x - sigma * output) / (alpha * d_sigma - sigma * d_alpha)
    return (x - sigma * predicted_noise(interpolant, prediction, output, x, t)) / alpha


CONVERTERS: dict[str, Callable] = {
    "velocity": predicted_velocity,
    "score": predicted_score,
    "noise": predicted_noise,
    "data": predicted_data,
}


def convert(interpolant: Interpolant, output, x, t, source: str, target: str) -> torch.Tensor:
    """Turn a ``source`` prediction at (x, t) into the ``target`` one ("velocity", "score", "noise" or "data")."""
    return CONVERTERS[target](interpolant, source, output, x, t)


def loss_weight_factor(interpolant: Interpolant, prediction: str, loss_weight: str | None, t) -> torch.Tensor:
    """The per-sample factor lambda_t that multiplies the model's own squared error (table above)."""
    if loss_weight is None:
        return torch.ones_like(t)
    eta = interpolant.eta(t)
    if prediction == "velocity":
        return torch.ones_like(t) if loss_weight == "velocity" else 1 / eta
    sigma = interpolant.sigma(t)
    return (eta / sigma) ** 2 if loss_weight == "velocity" else eta / sigma**2


def regression_error(interpolant: Interpolant, prediction: str, output, x1, noise, t) -> torch.Tensor:
    """Per-element error of the model output against its target for the pair (x1, eps) at t.

    velocity: v_theta - (alpha'_t x1 + sigma'_t eps);  noise: e_theta - eps;
    score: sigma_t s_theta + eps (sigma_t times the score error, finite at sigma_t = 0).
    """
    if prediction == "velocity":
        return output - interpolant.conditional_velocity(x1, noise, t)
    if prediction == "noise":
        return output - noise
    return interpolant.sigma(expand_time(t, x1)) * output + noise


def regression_loss(
    interpolant: Interpolant,
    prediction: str,
    loss_weight: str | None,
    output: torch.Tensor,
    x1: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """lambda_t * mean over dimensions of the squared regression error of ``output``; shape (B,)."""
    if output.shape != x1.shape:
        raise ValueError(f"model output has shape {tuple(output.shape)}, expected {tuple(x1.shape)}")
    error = regression_error(interpolant, prediction, output.to(x1.dtype), x1, noise, t)
    per_sample = error.pow(2).flatten(1).mean(dim=1)
    return loss_weight_factor(interpolant, prediction, loss_weight, t).to(per_sample.dtype) * per_sample


def training_loss(
    interpolant: Interpolant,
    prediction: str,
    loss_weight: str | None,
    model: Callable,
    x1: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict | None = None,
) -> torch.Tensor:
    """``regression_loss`` of the model evaluated at x_t = alpha_t x1 + sigma_t noise; shape (B,)."""
    x_t = interpolant.interpolate(x1, noise, t)
    output = model(x_t, t, **(model_kwargs or {}))
    return regression_loss(interpolant, prediction, loss_weight, output, x1, noise, t)
