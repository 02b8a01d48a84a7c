"""The math of SiT: interpolants, predictions and losses, samplers and likelihood. No I/O, no model.

    from sitcli.transport import Transport, sample_ode, sample_sde, log_likelihood

Modules (time runs from t = 0, noise, to t = 1, data):

    interpolants    x_t = alpha_t x1 + sigma_t eps: linear, GVP, VP, and their derivatives
    objectives      what the model predicts, conversions between predictions, the regression loss
    transport       ``Transport``: interpolant + prediction + loss weight, safe time intervals, discrete time
    time_sampling   the density training times are drawn from
    time_grids      the time grids samplers step on (uniform, cosine, edm, logsnr; snapped in discrete time)
    methods         the registry of ODE and SDE methods and last steps
    integrate       the one ODE integration (fixed grid, multistep, adaptive) behind samplers and likelihood
    adams           sit's variable-step Adams-Bashforth solver
    multistep       DPM-Solver++ (2M, 3M) and UniPC: exponential integrators in the log-SNR
    searched        a solver searched for one model (NeuralSolver-style times and coefficients)
    tsit5           Tsitouras' 5(4) pair, registered with torchdiffeq
    samplers        ``sample_ode``, ``sample_sde``
    diffusion       the diffusion coefficients w(t) of the sampling SDE
    likelihood      ``log_likelihood`` through the probability-flow ODE
    mixture         ``GaussianMixture``: exact fields and densities, for tests and examples
    meanflow        mean flows: the average velocity u(z, t, r), its training target and jump sampler
    fewstep         Decoupled MeanFlow, improved MeanFlow and AlphaFlow: their targets, time pairs, omega
    ddpm            DiT's discrete DDPM schedule as an interpolant
"""

from sitcli.transport.diffusion import DIFFUSION_COEFFICIENTS, diffusion_coefficient
from sitcli.transport.interpolants import GVP, INTERPOLANTS, VP, Interpolant, Linear, get_interpolant
from sitcli.transport.likelihood import log_likelihood
from sitcli.transport.meanflow import sample_meanflow
from sitcli.transport.methods import LAST_STEPS, LIKELIHOOD_METHODS, MEANFLOW_METHODS, ODE_METHODS, SDE_METHODS
from sitcli.transport.mixture import GaussianMixture
from sitcli.transport.objectives import LOSS_WEIGHTS, PREDICTIONS
from sitcli.transport.samplers import sample_ode, sample_sde
from sitcli.transport.transport import Transport

__all__ = [
    "Transport", "sample_ode", "sample_sde", "log_likelihood", "GaussianMixture",
    "Interpolant", "Linear", "GVP", "VP", "INTERPOLANTS", "get_interpolant",
    "PREDICTIONS", "LOSS_WEIGHTS", "DIFFUSION_COEFFICIENTS", "diffusion_coefficient",
    "ODE_METHODS", "SDE_METHODS", "LAST_STEPS", "LIKELIHOOD_METHODS", "MEANFLOW_METHODS", "sample_meanflow",
]
