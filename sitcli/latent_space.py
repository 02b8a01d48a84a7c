"""The latent space of a job: which autoencoder its flags name, that autoencoder opened, and what a
latent cache or a run records of it.

    spec = AutoencoderSpec(rae_encoder="dinov2-with-registers-base", rae_decoder="model.pt",
                           latent_stats="stat.pt")
    ae = spec.open(image_size=256)                     # an ``autoencoder.Autoencoder``
    record = identity(ae)                              # kind, source, sha256 of its files, latent shape

Three kinds stand behind the flags:
    --vae FOLDER                      a diffusers AutoencoderKL; latents z * scaling_factor (SD-VAE's road,
                                      the one sit has always taken: the config's shift_factor is not applied)
    --vae FOLDER --latent-stats FILE  the same VAE, its raw latents normalised by per-channel or per-element
                                      statistics (f16c32 VAEs, whose channels differ in scale)
    --rae-encoder PATH [--rae-decoder PATH] --latent-stats FILE
                                      a representation autoencoder: a frozen DINOv2 and a ViT decoder

Statistics are never assumed: RAE latents and the latents of VAEs that downsample more than 8x (f16,
f32) are refused without them, naming ``sit latent-stats``. The statistics file is sit's
safetensors (``autoencoder.files``), RAE's ``stat.pt`` or LightningDiT's ``latents_stats.pt``.

A decoder (``--rae-decoder``) is RAE's released ``model.pt``, a ``.safetensors`` of the same names, or
a ``sit train-decoder`` run folder (its newest checkpoint's EMA weights); each is loaded with
``strict=True``. The encoder's input side is image_size / decoder patch * encoder patch; the decoder
patch comes from the decoder, or from ``rae_patch`` (16, RAE's) when encoding without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sitcli import runs
from sitcli.autoencoder import Autoencoder, KLAutoencoder
from sitcli.autoencoder.files import load_normalization
from sitcli.autoencoder.kl import latent_scale, load_vae
from sitcli.autoencoder.normalization import scale_only
from sitcli.autoencoder.rae import DECODER_PATCH, RAE, load_rae_encoder
from sitcli.autoencoder.rae_decoder import DecoderConfig, RAEDecoder
from sitcli.encoders import encoder_identity
from sitcli.errors import InputError

STATS_COMMAND = "sit latent-stats"
FLAGS = "--vae FOLDER, or --rae-encoder DINOV2 --rae-decoder DECODER"


@dataclass(frozen=True)
class AutoencoderSpec:
    """The autoencoder flags of a job (all None: pixels). See the module for the three kinds."""

    vae: str | None = None
    rae_encoder: str | None = None
    rae_decoder: str | None = None
    rae_patch: int | None = None
    latent_stats: str | None = None

    @property
    def kind(self) -> str | None:
        """ "kl", "rae" or None (no autoencoder)."""
        return "kl" if self.vae else "rae" if self.rae_encoder or self.rae_decoder else None

    def check(self) -> None:
        """Refuse flags that do not name one autoencoder (no file is read). Statistics alone are fine: a
        latent cache names its autoencoder."""
        if self.vae and (self.rae_encoder or self.rae_decoder):
            raise InputError("--vae and --rae-encoder/--rae-decoder name two autoencoders: pass one of them")
        if self.rae_patch is not None and not self.rae_encoder and not self.rae_decoder:
            raise InputError("--rae-patch is the RAE decoder's patch: pass it with --rae-encoder")

    def open(self, image_size: int | None = None, device: torch.device | str = "cpu", image_channels: int = 3,
             decoder: bool = True) -> Autoencoder:
        """The autoencoder, on ``device``; ``decoder=False`` leaves an RAE decoder unread (encoding only).
        For an RAE, ``image_size`` None takes the decoder's."""
        self.check()
        normalization = load_normalization(self.latent_stats) if self.latent_stats else None
        if self.kind == "kl":
            vae = load_vae(self.vae, device)
            # sit's SD-VAE road: the config's scaling factor alone, as `sit` has always encoded.
            norm = normalization or scale_only(latent_scale(vae), source="the VAE's config scaling_factor")
            return KLAutoencoder(vae, norm, str(Path(self.vae).resolve()))
        if self.kind != "rae":
            raise InputError(f"no autoencoder given{' for --latent-stats' if self.latent_stats else ''}: pass {FLAGS}")
        if not self.rae_encoder:
            raise InputError("an RAE needs its encoder too: pass --rae-encoder DINOV2 (a transformers folder or "
                             "torch hub's dinov2_vitb14_reg4_pretrain.pth)")
        dec = load_decoder(self.rae_decoder) if decoder and self.rae_decoder else None
        patch = self.rae_patch or (dec.config.patch_size if dec is not None else DECODER_PATCH)
        if dec is not None and self.rae_patch and self.rae_patch != dec.config.patch_size:
            raise InputError(f"--rae-patch {self.rae_patch}: the decoder {self.rae_decoder} has "
                             f"{dec.config.patch_size}-pixel patches; drop --rae-patch")
        if image_size is None:
            if dec is None:
                raise InputError("the image size of an RAE without a decoder is unknown: pass --image-size")
            image_size = dec.config.image_size
        encoder = load_rae_encoder(self.rae_encoder, image_size, patch)
        rae = RAE(encoder, dec, normalization, image_channels=image_channels,
                  source=str(Path(self.rae_encoder).resolve()))
        return rae.to(device)


def needs_statistics(ae: Autoencoder) -> str | None:
    """Why this autoencoder's latents need statistics (None when a scale is the convention)."""
    if ae.kind == "rae":
        return "RAE latents (DINOv2 tokens) are normalised per element, as RAE's stat.pt does"
    factor = ae.identity().get("downsampling", 8)
    if factor > 8:
        return (f"an f{factor} VAE's latents have no conventional scale (its config's scaling_factor is diffusers' "
                "default 0.18215 unless set)")
    return None


def require_statistics(ae: Autoencoder, where: str, command: str) -> None:
    """Refuse latents that need statistics when ``ae`` has none, naming the command that computes them."""
    why = needs_statistics(ae)
    if why and ae.normalization.kind == "scale":
        raise InputError(f"{where}: {why}; compute them with `{command}` and pass --latent-stats FILE "
                         "(or RAE's stat.pt)")


def identity(ae: Autoencoder, image_size: int) -> dict:
    """What a cache or run records of the encoding side: kind, source, sha256 of its files, latent shape."""
    c, h, w = ae.latent_shape(image_size)
    if ae.kind == "kl":
        record = {"kind": "kl", "source": ae.source, "sha256": encoder_identity(ae.source),
                  "downsampling": ae.identity()["downsampling"]}
    else:
        source = ae.encoder.encoder.source
        record = {"kind": "rae", "source": str(Path(source).resolve()), "sha256": encoder_identity(source),
                  "encoder_input_size": ae.encoder.input_size}
    return {**record, "image_size": image_size, "latent_shape": [c, h, w]}


def statistics_identity(path: str | Path) -> dict:
    """What a cache or run records of a statistics file: where, its sha256, and what it holds."""
    norm = load_normalization(path)
    return {"file": str(Path(path).resolve()), "sha256": encoder_identity(path), "kind": norm.kind,
            "describe": norm.describe()}


def model_autoencoder(tcfg, device: torch.device | str = "cpu", vae: str | None = None,
                      rae_encoder: str | None = None, rae_decoder: str | None = None,
                      latent_stats: str | None = None) -> Autoencoder | None:
    """The autoencoder that decodes the samples of a model trained with the settings ``tcfg`` (a
    ``TrainConfig``), the run's own parts unless others are given; None for a pixel model.

    A model that records no autoencoder and takes latents other than SD-VAE's 4 channels (an RAE's 768, an
    f16 VAE's 32) is refused unless its parts are given; so are statistics other than those it was trained
    with, and an RAE without a decoder.
    """
    record = getattr(tcfg, "autoencoder", None) or {}
    recorded_rae = record.get("source") if record.get("kind") == "rae" else None
    given = vae or rae_encoder or rae_decoder or latent_stats
    if tcfg.latent_scale is None and tcfg.in_channels in (1, 3) and not given:
        return None  # pixels
    spec = AutoencoderSpec(
        vae=vae or (tcfg.vae if not (rae_encoder or rae_decoder) else None),
        rae_encoder=rae_encoder or getattr(tcfg, "rae_encoder", None) or recorded_rae,
        rae_decoder=rae_decoder or getattr(tcfg, "rae_decoder", None),
        rae_patch=getattr(tcfg, "rae_patch", None),
        latent_stats=latent_stats or getattr(tcfg, "latent_stats", None),
    )
    shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)
    if not spec.kind:
        if tcfg.in_channels == 4:  # the official checkpoints' SD-VAE latents
            raise InputError("this model works in a VAE latent space; pass --vae with a local diffusers "
                             "AutoencoderKL folder")
        raise InputError(f"this model takes {'x'.join(map(str, shape))} latents and records no autoencoder: pass "
                         "--rae-encoder DINOV2 --rae-decoder DECODER --latent-stats STATS (an RAE's), or --vae "
                         "FOLDER --latent-stats STATS (an f16 VAE's)")
    recorded_stats = (record.get("normalization") or {}).get("sha256")
    if latent_stats and recorded_stats and encoder_identity(latent_stats) != recorded_stats:
        raise InputError(f"--latent-stats {latent_stats}: the model was trained with other statistics "
                         f"({record['normalization']['file']}); drop --latent-stats")
    if spec.kind == "rae" and not spec.rae_decoder:
        raise InputError("decoding RAE latents needs the RAE's decoder: pass --rae-decoder (RAE's model.pt or a "
                         "`sit train-decoder` run)")
    channels = record.get("image_channels", 3)
    ae = spec.open(tcfg.image_size if record or spec.kind == "kl" else None, device, image_channels=channels)
    image_size = tcfg.image_size or ae.decoder.config.image_size
    require_statistics(ae, "decoding these latents", STATS_COMMAND)
    gives = tuple(ae.latent_shape(image_size)) if ae.kind == "rae" else (ae.vae.config.latent_channels,)
    if gives != shape[: len(gives)]:  # a VAE decodes latents of any size (the image is then its own size)
        raise InputError(f"the autoencoder gives {'x'.join(map(str, gives))} latents"
                         + (f" at {image_size} pixels" if ae.kind == "rae" else " (channels)")
                         + f"; the model takes {'x'.join(map(str, shape))}")
    return ae


def can_decode(tcfg) -> bool:
    """Whether a run names what decodes its latents (a VAE, or an RAE with its decoder), or is in pixels."""
    if tcfg.latent_scale is None:
        return True
    return bool(tcfg.vae or getattr(tcfg, "rae_decoder", None))


def decodes(ae: Autoencoder) -> bool:
    """Whether ``ae`` can decode (an RAE opened to encode on the fly may have no decoder)."""
    return getattr(ae, "decoder", True) is not None


def pixel_channels(ae: Autoencoder | None, in_channels: int) -> int:
    """The channels of the images a model's samples become."""
    if ae is None:
        return in_channels
    return getattr(ae, "image_channels", 3)


#################################################################################
#                                    Decoders                                   #
#################################################################################


def load_decoder(path: str | Path, num_heads: int | None = None) -> RAEDecoder:
    """An RAE decoder: RAE's ``model.pt``, a ``.safetensors`` of its names, or a ``sit train-decoder`` run
    (its newest intact checkpoint's EMA weights); loaded strictly."""
    from sitcli.formats.rae import build_decoder, read_state_dict

    path = Path(path)
    if not path.exists():
        raise InputError(f"no RAE decoder at {path}: pass RAE's released model.pt (hf download "
                         "nyu-visionx/RAE-collections) or a `sit train-decoder` run folder")
    config = None
    if path.is_dir():
        if not runs.is_run(path):
            raise InputError(f"{path} is a folder but not a `sit train-decoder` run (no config.json)")
        saved = runs.read_config(path)
        if "decoder" not in saved:
            raise InputError(f"{path} is a sit run but not a decoder run: pass a `sit train-decoder` run folder")
        config = DecoderConfig(**saved["decoder"])
        latest, damaged = runs.newest_checkpoint(path)
        if damaged or latest is None:
            raise InputError(f"decoder run {path} has no intact newest checkpoint"
                             + (f" ({damaged[0][0]}: {damaged[0][1]})" if damaged else ""))
        path = latest / "ema.safetensors"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own kinds on damaged files
            raise InputError(f"{path} is not a readable safetensors file ({type(err).__name__})") from None
    else:
        state = read_state_dict(path)
    return build_decoder(state, str(path), config, num_heads)
