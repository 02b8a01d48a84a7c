"""Starting a few-step model from a trained flow SiT's weights: the first step of fine-tuning (``--init-from``).

    from sitcli.training.init_from import init_from_flow
    model = init_from_flow(SiT(**arch, dmf_depth=20), flow_state_dict)   # a DMF model that is the flow SiT at r = t

The few-step forms are ``SiT`` options (``models.SiT``: ``mean_flow``, ``dmf_depth``, ``omega_input``,
``velocity_head_depth``); the objectives that fine-tune them are in ``training.fewstep_losses``.
"""

from __future__ import annotations

import torch

from sitcli.models import SiT


def init_from_flow(model: SiT, flow_state_dict: dict[str, torch.Tensor]) -> SiT:
    """Start a few-step ``model`` from a trained flow SiT's weights (fine-tuning, ``model`` changed in place).

    ``model`` is the flow SiT's architecture with any of ``mean_flow``, ``dmf_depth``, ``omega_input``,
    ``velocity_head_depth``. Every backbone tensor is copied; the new parts start so that the model
    computes the flow model's output exactly, bit for bit, at r = t and omega = 1 (and, for ``mean_flow``
    and ``omega_input``, at every r and omega, until the first update):

        dmf_depth             nothing new: r goes through the shared ``t_embedder``, as in DMF's fine-tuning
        r_embedder,           the last linear layer zero (a zero embedding added to c), the first as
        omega_embedder          ``initialize_weights`` drew it; the zero layer gets gradients at once
        velocity_blocks.i,    copies of blocks.(depth - k + i) and of ``final_layer``: iMF's two heads
        velocity_final_layer    start as the flow model's last k blocks

    The flow model's training-only ``projectors.*`` are copied when ``model`` has them and skipped
    otherwise; any other key that does not fit is refused (ValueError).
    """
    target = model.state_dict()
    foreign = sorted(k for k in flow_state_dict if k not in target and not k.startswith("projectors."))
    if foreign:
        raise ValueError(f"not weights of this SiT's backbone: {foreign[:3]}")
    new = ("r_embedder.", "omega_embedder.", "velocity_blocks.", "velocity_final_layer.")
    missing = sorted(k for k in target if k not in flow_state_dict and not k.startswith(new + ("projectors.",)))
    if missing:
        raise ValueError(f"the flow model has no {missing[:3]}: a different architecture")
    state = dict(target)
    for key, value in flow_state_dict.items():
        if key in target:
            if value.shape != target[key].shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} in the flow model, "
                                 f"{tuple(target[key].shape)} here")
            state[key] = value
    for name in ("r_embedder", "omega_embedder"):
        if f"{name}.mlp.2.weight" in target and f"{name}.mlp.2.weight" not in flow_state_dict:
            state[f"{name}.mlp.2.weight"] = torch.zeros_like(target[f"{name}.mlp.2.weight"])
            state[f"{name}.mlp.2.bias"] = torch.zeros_like(target[f"{name}.mlp.2.bias"])
    first = len(model.blocks) - model.velocity_head_depth
    for key in target:
        if key in flow_state_dict:
            continue
        if key.startswith("velocity_blocks."):
            index, rest = key[len("velocity_blocks."):].split(".", 1)
            state[key] = flow_state_dict[f"blocks.{first + int(index)}.{rest}"]
        elif key.startswith("velocity_final_layer."):
            state[key] = flow_state_dict["final_layer." + key[len("velocity_final_layer."):]]
    model.load_state_dict(state)
    return model
