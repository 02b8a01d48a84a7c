"""The loss of an RAE decoder (``train_stage1.py`` of bytetriper/RAE), as plain functions.

The encoder is frozen; its latents are noised, decoded, and the image compared with the input:

    z~ = z + sigma eps,  sigma = tau u,  u ~ U[0, 1) per image, eps ~ N(0, I)      (``noise_augment``; tau = 0.8)
    L = L1 + w_lpips LPIPS(x, x^) + w_gan lambda G(D(x^))                           (``decoder_loss``)

    L1       mean |x^ - x| of images in [0, 1] (RAE's scale: half the mean gap of [-1, 1] images)
    LPIPS    VGG16 LPIPS on [-1, 1] images (``lpips``; RAE: weight 1 from the first step)
    G        the generator's adversarial loss -mean D(x^) (RAE's ``vanilla_g_loss``), with VQGAN's
             adaptive weight lambda = |grad_W L_rec| / (|grad_W G| + 1e-6), clamped to [0, 1e4], W the
             decoder's last layer (``decoder_pred.weight``), L_rec = L1 + w_lpips LPIPS; RAE: w_gan 0.75
             from epoch 8 of 16, the discriminator trained from epoch 6 with the hinge loss on
             8-bit-rounded reconstructions (``discriminator_loss``)

RAE's discriminator is a frozen DINO ViT-S/8 with trained convolutional heads on four blocks' tokens,
fed DiffAug-augmented images (``src/disc``); it is not built here. ``decoder_loss`` takes any
``discriminator`` callable (images in [-1, 1] -> logits), so one can be plugged in; without one the
loss is L1 (+ LPIPS when an LPIPS module is given).

RAE draws the noise on the (B, N, C) token sequence before reshaping it to (B, C, H, W); the noise is
i.i.d. per element, so drawing it on the reshaped latents is the same distribution (not the same
numbers for a seed).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sitcli.autoencoder.rae import RAE

MAX_GAN_WEIGHT = 1e4  # RAE's max_d_weight
NOISE_TAU = 0.8  # RAE's noise_tau while training the decoder (0 at inference)


def noise_augment(z: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """z + tau u eps with u ~ U[0, 1) one per sample and eps ~ N(0, I) (RAE's ``RAE.noising``): first
    u, then eps, from ``generator``."""
    if tau == 0:
        return z
    u = torch.rand((z.shape[0],) + (1,) * (z.dim() - 1), device=z.device, dtype=z.dtype, generator=generator)
    return z + tau * u * torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)


def l1_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """mean |x^ - x| in [0, 1] units, for images in [-1, 1]."""
    return (reconstruction - images).abs().mean() / 2


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """(mean relu(1 - D(x)) + mean relu(1 + D(x^))) / 2."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """(mean softplus(-D(x)) + mean softplus(D(x^))) / 2."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(x^) (RAE's and taming's ``vanilla_g_loss``)."""
    return -logits_fake.mean()


def adaptive_weight(recon_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = MAX_GAN_WEIGHT) -> torch.Tensor:
    """|grad recon_loss| / (|grad gan_loss| + 1e-6) at ``last_layer``, clamped to [0, max_weight], detached."""
    g_rec = torch.autograd.grad(recon_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-6)).clamp(0, max_weight).detach()


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 256 levels of an 8-bit file (what the discriminator sees as fake)."""
    return torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def decoder_loss(
    rae: RAE,
    images: torch.Tensor,
    tau: float = NOISE_TAU,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lpips_weight: float = 1.0,
    discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gan_weight: float = 0.75,
    max_gan_weight: float = MAX_GAN_WEIGHT,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The decoder's loss terms for a batch of images in [-1, 1] (see the module).

    Returns {"loss", "l1", "lpips", "gan", "gan_weight", "reconstruction"}: "loss" carries the graph
    to the decoder's parameters; the others are detached (zeros for terms not asked for).
    """
    with torch.no_grad():
        z = rae.encoder.features(images)
    z = noise_augment(z, tau, generator)
    reconstruction = rae.decode_raw(z, grad=True)
    target = images.float()
    l1 = l1_loss(reconstruction, target)
    perceptual = lpips(target, reconstruction).mean() if lpips is not None else l1.new_zeros(())
    recon_loss = l1 + lpips_weight * perceptual
    gan, weight = l1.new_zeros(()), l1.new_zeros(())
    loss = recon_loss
    if discriminator is not None and gan_weight > 0:
        gan = generator_loss(discriminator(reconstruction))
        weight = adaptive_weight(recon_loss, gan, rae.decoder.decoder_pred.weight, max_gan_weight)
        loss = recon_loss + gan_weight * weight * gan
    return {"loss": loss, "l1": l1.detach(), "lpips": perceptual.detach(), "gan": gan.detach(),
            "gan_weight": weight, "reconstruction": reconstruction.detach()}


def discriminator_loss(discriminator: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       reconstruction: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The discriminator's loss on real images and 8-bit-rounded reconstructions (RAE: hinge)."""
    return D_LOSSES[kind](discriminator(images), discriminator(to_8bit(reconstruction.detach())))


def decoder_step(rae: RAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, clip_grad: float | None = None,
                 **loss_kwargs) -> dict[str, float]:
    """One optimizer step of the decoder on ``decoder_loss`` (gradients clipped to ``clip_grad`` when
    given); returns the terms as floats."""
    optimizer.zero_grad(set_to_none=True)
    terms = decoder_loss(rae, images, **loss_kwargs)
    terms["loss"].backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(rae.decoder.parameters(), clip_grad)
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items() if k != "reconstruction"}
