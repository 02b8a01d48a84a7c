"""The values a numeric setting may take, declared once per field (``config.TRAIN_DOMAINS``,
``SAMPLE_DOMAINS``, and each job config's own table) and checked before a job writes anything."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sitcli.errors import InputError


@dataclass(frozen=True)
class Domain:
    """The values a numeric setting may take: a number between ``lo`` and ``hi`` (each end open or
    closed), an integer when ``integer``, finite unless ``infinite`` lets an end be +-inf; never NaN.
    None is always allowed: it means "unset" (a preset or the documented default applies)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    infinite: bool = False

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if math.isnan(value) or (math.isinf(value) and not self.infinite) or (self.integer and value != int(value)):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else ("a number" if self.infinite else "a finite number")
        lo, hi = (f"{v:g}" for v in (self.lo, self.hi))
        if math.isinf(self.lo) and math.isinf(self.hi):
            return kind
        if math.isinf(self.hi):
            return f"{kind} {'>' if self.lo_open else '>='} {lo}"
        if math.isinf(self.lo):
            return f"{kind} {'<' if self.hi_open else '<='} {hi}"
        return f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def check_domains(values: dict, domains: dict[str, Domain], flags: dict[str, str] | None = None) -> None:
    """Refuse the first value outside its declared domain, naming its flag (``--name`` unless ``flags``
    spells it otherwise) and the domain. Tuples and lists are checked element by element."""
    for name, domain in domains.items():
        value = values.get(name)
        for item in value if isinstance(value, (tuple, list)) else [value]:
            if item is not None and not domain.contains(item):
                flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
                raise InputError(f"{flag} {item}: pass {domain.describe()}")


POSITIVE, NON_NEGATIVE, FINITE = Domain(0, lo_open=True), Domain(0), Domain()
COUNT, COUNT_OR_ZERO = Domain(1, integer=True), Domain(0, integer=True)  # 0 where it means "none" / "torch's default"
SEED = Domain(0, 2**30, hi_open=True, integer=True)  # seeds.index_generator's range
EPS = Domain(0, 0.5, hi_open=True)  # distance from a singular end of [0, 1]
# A factor of the sampler's float32 arithmetic: one beyond float32's range is infinite there, so it can only fail.
FLOAT32_MAX = 3.4028234663852886e38
SCALE, NON_NEGATIVE_SCALE = Domain(-FLOAT32_MAX, FLOAT32_MAX), Domain(0, FLOAT32_MAX)
