"""The math of SiT: interpolants, predictions and losses, samplers and likelihood. No I/O, no model.

    from sitcli.transport import Transport, sample_ode, sample_sde, log_likelihood
"""

from sitcli.transport.diffusion import DIFFUSION_COEFFICIENTS, diffusion_coefficient
from sitcli.transport.interpolants import GVP, INTERPOLANTS, VP, Interpolant, Linear, get_interpolant
from sitcli.transport.likelihood import log_likelihood
from sitcli.transport.mixture import GaussianMixture
from sitcli.transport.objectives import LOSS_WEIGHTS, PREDICTIONS
from sitcli.transport.samplers import (
    ADAPTIVE_METHODS,
    FIXED_GRID_METHODS,
    LAST_STEPS,
    MULTISTEP_METHODS,
    SDE_METHODS,
    sample_ode,
    sample_sde,
)
from sitcli.transport.transport import Transport

__all__ = [
    "Transport", "sample_ode", "sample_sde", "log_likelihood", "GaussianMixture",
    "Interpolant", "Linear", "GVP", "VP", "INTERPOLANTS", "get_interpolant",
    "PREDICTIONS", "LOSS_WEIGHTS", "DIFFUSION_COEFFICIENTS", "diffusion_coefficient",
    "FIXED_GRID_METHODS", "MULTISTEP_METHODS", "ADAPTIVE_METHODS", "SDE_METHODS", "LAST_STEPS",
]
