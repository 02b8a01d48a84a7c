"""Declared numeric domains (sitcli/domains.py, the tables in sitcli/config.py and sitcli/sample_config.py): every
numeric setting of every command has one, and values outside it are refused up front naming the flag and the domain.

The bad values are generated from the declarations, so a newly declared field gets its checks: one table-driven
test walks every command's settings."""

import math
import typing

import pytest
import torch

from sitcli.cli import convert as convert_cli, ema as ema_cli, evaluate as evaluate_cli, sample as sample_cli, \
    train as train_cli
from sitcli.cli import decoder as decoder_cli, latents as latents_cli, solvers as solvers_cli
from sitcli.config import TRAIN_DOMAINS, TrainConfig
from sitcli.sample_config import SAMPLE_DOMAINS, SAMPLE_FLAGS, SampleConfig
from sitcli.convert import CONVERT_DOMAINS, ConvertConfig
from sitcli.ema import EMA_DOMAINS, EmaConfig
from sitcli.evaluate.suite import FID_DOMAINS, FidConfig
from sitcli.data.latent_cache import CACHE_DOMAINS, CacheConfig
from sitcli.latent_stats import STATS_DOMAINS, LatentStatsConfig
from sitcli.nll import NLL_DOMAINS, NllConfig
from sitcli.search_solver import SEARCH_DOMAINS, SearchConfig
from sitcli.training.decoder import DECODER_DOMAINS, DecoderTrainConfig
from sitcli.domains import Domain
from sitcli.errors import InputError
from sitcli.training.presets import apply_presets


def outside(domain: Domain) -> list:
    """Values the domain excludes: NaN, the infinities it does not allow, just past each end, a fraction."""
    bad = [math.nan] + ([] if domain.infinite else [math.inf, -math.inf])
    step = 1 if domain.integer else 1e-3
    if math.isfinite(domain.lo):  # a step of at least one ulp: 1e-3 vanishes past an end such as float32's largest
        bad.append(domain.lo if domain.lo_open else domain.lo - max(step, math.ulp(domain.lo)))
    if math.isfinite(domain.hi):
        bad.append(domain.hi if domain.hi_open else domain.hi + max(step, math.ulp(domain.hi)))
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


# Every command: its CLI function, its config and the config's domains.
COMMANDS = {
    "train": (train_cli.train, TrainConfig, TRAIN_DOMAINS),
    "sample": (sample_cli.sample, SampleConfig, SAMPLE_DOMAINS),
    "nll": (evaluate_cli.nll, NllConfig, NLL_DOMAINS),
    "fid": (evaluate_cli.fid, FidConfig, FID_DOMAINS),
    "convert": (convert_cli.convert, ConvertConfig, CONVERT_DOMAINS),
    "cache-latents": (convert_cli.cache_latents, CacheConfig, CACHE_DOMAINS),
    "ema": (ema_cli.ema, EmaConfig, EMA_DOMAINS),
    "search-solver": (solvers_cli.search_solver, SearchConfig, SEARCH_DOMAINS),
    "latent-stats": (latents_cli.latent_stats, LatentStatsConfig, STATS_DOMAINS),
    "train-decoder": (decoder_cli.train_decoder, DecoderTrainConfig, DECODER_DOMAINS),
}


def test_every_numeric_field_and_flag_declares_its_domain():
    for command, (fn, config, domains) in COMMANDS.items():
        for name in numeric(config) - {"learn_sigma"}:
            assert name in domains, f"{config.__name__}.{name} declares no domain"
        for name in numeric(fn):
            assert name in domains, f"sit {command} --{name.replace('_', '-')} declares no domain"


def test_every_domain_holds_its_ends_and_nothing_past_them():
    domains = [d for _, _, table in COMMANDS.values() for d in table.values()]
    wrong = [f"{d}: refuses {v}" for d in domains for v in inside(d) if not d.contains(v)]
    wrong += [f"{d}: accepts {v}" for d in domains for v in outside(d) if d.contains(v)]
    assert not wrong, wrong


def _train(name, value):
    apply_presets(TrainConfig(data="digits", **{name: value})).check()


def _sample(name, value):
    SampleConfig(ckpt="run", **{name: (value, 1.0) if name == "cfg_interval" else value})


# Harmless required arguments of each config (the domains are checked first).
REQUIRED = {
    "nll": dict(ckpt="run"),
    "fid": dict(a="a", b="b"),
    "convert": dict(src="a.pt", dst="b.pt"),
    "cache-latents": dict(data="data", vae="vae", out="out"),
    "search-solver": dict(ckpt="run", nfe=5),
    "latent-stats": dict(data="data", out="stats.safetensors"),
    "train-decoder": dict(rae_encoder="dinov2"),
}


def _job(command: str):
    config = COMMANDS[command][1]
    return lambda name, value: config(**{**REQUIRED[command], name: (value, 1.0) if name == "cfg_interval" else value})


# (command, the call that must refuse, its domains, how its flags are spelt): every numeric setting of every command.
TABLE = [
    ("train", _train, TRAIN_DOMAINS, {}),
    ("sample", _sample, SAMPLE_DOMAINS, SAMPLE_FLAGS),
    ("nll", _job("nll"), NLL_DOMAINS, {"num": "--num-samples"}),
    *((command, _job(command), COMMANDS[command][2], {}) for command in ("fid", "convert", "cache-latents",
                                                                          "search-solver")),
    ("ema", lambda name, value: EmaConfig(**{"run": "run", "sigma_rel": 0.05, "out": "out", name: value}), EMA_DOMAINS,
     {}),
    *((command, _job(command), COMMANDS[command][2], {}) for command in ("fid", "convert", "cache-latents")),
    ("latent-stats", _job("latent-stats"), STATS_DOMAINS, {"num": "--num-images"}),
    ("train-decoder", _job("train-decoder"), DECODER_DOMAINS, {}),
]


def test_every_value_outside_a_declared_domain_is_refused_naming_its_flag_and_domain():
    """Each value ``outside`` each declared domain, for every setting of every command: one InputError whose
    message starts with the flag and states the domain."""
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
                    ok = message.startswith(f"{flag} ") and domain.describe() in message
                    if not ok:
                        wrong.append(f"sit {command} {flag} {value}: {message}")
                else:
                    wrong.append(f"sit {command} {flag} {value}: accepted")
    assert checked >= 329, checked  # 165 train, 63 sample, 101 other-command cases when this table was written
    assert not wrong, "\n".join(wrong)


def test_steps_zero_is_refused_and_unset_steps_take_the_samplers_default():
    with pytest.raises(InputError, match="--steps 0"):
        SampleConfig(ckpt="run", steps=0)
    assert SampleConfig(ckpt="run").steps == 50 and SampleConfig(ckpt="run", sampler="sde").steps == 250


def test_a_device_that_does_not_exist_is_refused(monkeypatch):
    from sitcli.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (
        ("foo", "unknown device 'foo'"),
        ("cuda", "CUDA is not available"),
        ("meta", "not supported"),
    ):
        with pytest.raises(InputError, match=message):
            resolve_device(device)


def test_samples_that_come_out_non_finite_are_an_error_naming_the_cause(tiny_run, tmp_path, one_thread):
    from safetensors.torch import load_file, save_file

    from sitcli.sample import sample

    with pytest.raises(InputError, match=r"indices 0\.\.1 came out NaN or inf.*--cfg-scale 1e\+38"):
        sample(
            SampleConfig(ckpt=str(tiny_run), out=str(tmp_path / "big"), num=2, steps=2, cfg_scale=1e38), progress=False
        )
    assert not list((tmp_path / "big").glob("*.png"))
    weights = load_file(tiny_run / "checkpoints" / "0000003" / "ema.safetensors")
    weights["final_layer.linear.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    with pytest.raises(InputError, match=r"hold NaN or inf in 1 tensors \(final_layer\.linear\.weight\)"):
        sample(
            SampleConfig(ckpt=str(tmp_path / "nan.safetensors"), out=str(tmp_path / "nan"), num=2, steps=2),
            progress=False,
        )
    assert not (tmp_path / "nan").exists()  # refused before the folder is made
