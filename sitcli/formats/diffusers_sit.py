"""SiT as a diffusers model: ``SiTTransformer2DModel.from_pretrained(folder)``.

diffusers' own ``DiTTransformer2DModel`` cannot run SiT weights unchanged: its timestep embedding
divides the frequency exponent by 127 instead of 128 (``downscale_freq_shift=1``) and expects DiT's
integer timesteps, while SiT is trained on continuous t in [0, 1] with exponent i / 128. This class
is sit's own network (``sitcli.models.SiT``, same parameter names, same arithmetic) behind diffusers'
``ModelMixin`` + ``ConfigMixin``, so ``save_pretrained`` / ``from_pretrained`` write and read a
standard diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) and the outputs
are sit's, bit for bit.

Example:
    >>> from sitcli.formats.diffusers_sit import SiTTransformer2DModel
    >>> model = SiTTransformer2DModel.from_pretrained("converted/SiT-XL-2-256")
    >>> v = model(latents, timestep=torch.full((4,), 0.5), class_labels=labels).sample

``timestep`` is sit's time (float in [0, 1], 0 = noise, 1 = data), not a DDPM step index; what
the output means (velocity, score or noise) is recorded under ``"_sit"`` in ``config.json``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from sitcli.models import SiT


class SiTTransformer2DModel(SiT, ModelMixin, ConfigMixin):
    """sit's ``SiT`` with diffusers' loading, saving and call convention.

    Config fields are ``SiT``'s constructor arguments (``input_size`` is the latent side that
    diffusers calls ``sample_size``; both are readable from ``model.config``).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        SiT.__init__(
            self,
            input_size=input_size,
            patch_size=patch_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            class_dropout_prob=class_dropout_prob,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
        )

    @property
    def sample_size(self) -> int:
        return self.input_size

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """sit's output for latents ``hidden_states`` (B, C, H, W) at sit time ``timestep`` (scalar or (B,))."""
        t = torch.as_tensor(timestep, device=hidden_states.device)
        if not t.is_floating_point():
            t = t.float()
        t = t.expand(hidden_states.shape[0]) if t.dim() == 0 else t
        out = SiT.forward(self, hidden_states, t, class_labels)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
