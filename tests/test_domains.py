"""Declared numeric domains (sitcli/domains.py, the tables in sitcli/config.py): every numeric setting of every
command has one, and values outside it are refused up front naming the flag and the domain.

The bad values are generated from the declarations, so a newly declared field gets its checks: one table-driven
test walks every command's settings."""

import math
import typing

import pytest
import torch

from sitcli import cli
from sitcli.config import FLAG_DOMAINS, SAMPLE_DOMAINS, SAMPLE_FLAGS, TRAIN_DOMAINS, SampleConfig, TrainConfig
from sitcli.domains import Domain
from sitcli.errors import InputError
from sitcli.training.presets import apply_presets


def outside(domain: Domain) -> list:
    """Values the domain excludes: NaN, the infinities it does not allow, just past each end, a fraction."""
    bad = [math.nan] + ([] if domain.infinite else [math.inf, -math.inf])
    step = 1 if domain.integer else 1e-3
    if math.isfinite(domain.lo):
        bad.append(domain.lo if domain.lo_open else domain.lo - step)
    if math.isfinite(domain.hi):
        bad.append(domain.hi if domain.hi_open else domain.hi + step)
    if domain.integer:
        bad.append((domain.lo if math.isfinite(domain.lo) else 0) + 1.5)
    return bad


def inside(domain: Domain) -> list:
    """Values at or next to its ends that it must accept."""
    lo = domain.lo if math.isfinite(domain.lo) else -10
    hi = domain.hi if math.isfinite(domain.hi) else lo + 100
    step = 1 if domain.integer else 1e-3
    return [lo + step if domain.lo_open else lo, hi - step if domain.hi_open else hi]


def numeric(obj) -> set[str]:
    """The int and float (or tuple of them) fields of a dataclass, or parameters of a function."""
    hints = {k: v for k, v in typing.get_type_hints(obj).items() if k != "return"}
    return {name for name, hint in hints.items()
            if any(t in (int, float) for t in typing.get_args(hint) or (hint,)) or typing.get_origin(hint) is tuple}


def test_every_numeric_field_and_flag_declares_its_domain():
    assert numeric(TrainConfig) - {"learn_sigma"} <= set(TRAIN_DOMAINS)
    assert numeric(SampleConfig) <= set(SAMPLE_DOMAINS)
    configs = {"train": TRAIN_DOMAINS, "sample": SAMPLE_DOMAINS}
    commands = {"train": cli.train, "sample": cli.sample, "nll": cli.nll, "fid": cli.fid, "convert": cli.convert,
                "cache-latents": cli.cache_latents}
    for command, fn in commands.items():
        declared = configs.get(command) or FLAG_DOMAINS[command]
        for name in numeric(fn) - {"limit"}:  # nll's hidden old spelling of --num-samples
            assert name in declared, f"sit {command} --{name.replace('_', '-')} declares no domain in config.py"


def test_every_domain_holds_its_ends_and_nothing_past_them():
    domains = [*TRAIN_DOMAINS.values(), *SAMPLE_DOMAINS.values(), *(d for t in FLAG_DOMAINS.values() for d in t.values())]
    wrong = [f"{d}: refuses {v}" for d in domains for v in inside(d) if not d.contains(v)]
    wrong += [f"{d}: accepts {v}" for d in domains for v in outside(d) if d.contains(v)]
    assert not wrong, wrong


def _train(name, value):
    apply_presets(TrainConfig(data="digits", **{name: value})).check()


def _sample(name, value):
    SampleConfig(ckpt="run", **{name: (value, 1.0) if name == "cfg_interval" else value})


def _job(command: str):
    """The library call behind a command, with harmless positional arguments (the check comes first)."""
    from sitcli.convert import convert
    from sitcli.evaluate import evaluate
    from sitcli.latent_cache import cache_latents
    from sitcli.nll import nll

    calls = {"nll": lambda **k: nll("no-such-run", **k), "fid": lambda **k: evaluate("a", "b", **k),
             "convert": lambda **k: convert("a.pt", "b.pt", **k),
             "cache-latents": lambda **k: cache_latents("data", "vae", **{"image_size": 8, "out": "out", **k})}
    return lambda name, value: calls[command](**{name: value})


# (command, the call that must refuse, its domains, how its flags are spelt): every numeric setting of every command.
TABLE = [("train", _train, TRAIN_DOMAINS, {}), ("sample", _sample, SAMPLE_DOMAINS, SAMPLE_FLAGS),
         *((command, _job(command), table, {}) for command, table in FLAG_DOMAINS.items())]


def test_every_value_outside_a_declared_domain_is_refused_naming_its_flag_and_domain():
    """Each value ``outside`` each declared domain, for every setting of every command: one InputError whose
    message starts with the flag and states the domain (the other commands: names the flag)."""
    checked, wrong = 0, []
    for command, call, domains, flags in TABLE:
        for name, domain in domains.items():
            flag = flags.get(name, "--" + name.replace("_", "-"))
            for value in outside(domain):
                checked += 1
                try:
                    call(name, value)
                except InputError as err:
                    message = str(err)
                    if command in ("train", "sample"):
                        ok = message.startswith(f"{flag} ") and domain.describe() in message
                    else:
                        ok = flag in message or "--num-samples" in message
                    if not ok:
                        wrong.append(f"sit {command} {flag} {value}: {message}")
                else:
                    wrong.append(f"sit {command} {flag} {value}: accepted")
    assert checked >= 329, checked  # 165 train, 63 sample, 101 other-command cases when this table was written
    assert not wrong, "\n".join(wrong)


def test_a_run_that_recorded_grad_clip_zero_for_off_still_reads_as_off():
    assert TrainConfig.from_dict({"data": "digits", "grad_clip": 0.0}).grad_clip is None
    assert TrainConfig.from_dict({"data": "digits", "grad_clip": 2.0}).grad_clip == 2.0


def test_steps_zero_is_refused_and_unset_steps_take_the_samplers_default():
    with pytest.raises(InputError, match="--steps 0"):
        SampleConfig(ckpt="run", steps=0)
    assert SampleConfig(ckpt="run").steps == 50 and SampleConfig(ckpt="run", sampler="sde").steps == 250


def test_a_device_that_does_not_exist_is_refused(monkeypatch):
    from sitcli.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("foo", "unknown device 'foo'"), ("cuda", "CUDA is not available"), ("meta", "not supported")):
        with pytest.raises(InputError, match=message):
            resolve_device(device)


def test_samples_that_come_out_non_finite_are_an_error_naming_the_cause(tiny_run, tmp_path, one_thread):
    from safetensors.torch import load_file, save_file

    from sitcli.sample import sample

    with pytest.raises(InputError, match=r"indices 0\.\.1 came out NaN or inf.*--cfg-scale 1e\+38"):
        sample(SampleConfig(ckpt=str(tiny_run), out=str(tmp_path / "big"), num=2, steps=2, cfg_scale=1e38), progress=False)
    assert not list((tmp_path / "big").glob("*.png"))
    weights = load_file(tiny_run / "checkpoints" / "0000003" / "ema.safetensors")
    weights["final_layer.linear.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    with pytest.raises(InputError, match=r"hold NaN or inf in 1 tensors \(final_layer\.linear\.weight\)"):
        sample(SampleConfig(ckpt=str(tmp_path / "nan.safetensors"), out=str(tmp_path / "nan"), num=2, steps=2), progress=False)
    assert not (tmp_path / "nan").exists()  # refused before the folder is made
