"""Every job's outputs on the digits match the behaviour record (tests/golden/behaviour.json), on any x86 machine.

What is compared how, and why each tolerance is enough, is in ``tests/behaviour.py``. The tests below check
that the record holds here, that it holds with another CPU's kernels, and that it is still sharp: a loss weight
or a time density changed by 1e-5 fails it. Re-record (only when a change of behaviour is intended, and said so in
the commit) with ``SIT_RECORD_BEHAVIOUR=1 pytest tests/test_behaviour_unchanged.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import behaviour

RECORD = Path(__file__).parent / "golden" / "behaviour.json"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_every_output_is_what_the_record_holds(tmp_path):
    now = behaviour.on_one_thread(behaviour.outputs, tmp_path)
    if os.environ.get("SIT_RECORD_BEHAVIOUR") == "1":
        RECORD.write_text(behaviour.dumps(now))
    changed = behaviour.compare(json.loads(RECORD.read_text()), now)
    assert not changed, f"{len(changed)} outputs changed: " + "; ".join(changed[:20])


# Other CPUs' kernels, as this machine runs them when told to: AVX2 everywhere, or no vector ISA in ATen with MKL
# and oneDNN held to SSE4 (the two that differ most from an AVX-512 machine's).
KERNELS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


@pytest.mark.parametrize("kernels", sorted(KERNELS))
def test_other_kernels_match_the_record(kernels, tmp_path, record):
    out = tmp_path / "outputs.json"
    env = {**os.environ, **KERNELS[kernels], "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(behaviour.__file__)), str(out), "--train-only"], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    now = json.loads(out.read_text())
    changed = behaviour.compare(record, now, only=set(now))
    assert not changed, f"with {kernels} kernels: " + "; ".join(changed[:20])


@pytest.mark.parametrize("change", ["loss weight (1 + 1e-5 t)", "training time t + 1e-5 t (1 - t)"])
def test_a_small_change_of_behaviour_fails_the_record(change, monkeypatch, tmp_path, record):
    from sitcli.transport import objectives
    from sitcli.transport.transport import Transport

    if change.startswith("loss weight"):
        regression_loss = objectives.regression_loss
        monkeypatch.setattr(objectives, "regression_loss", lambda *a: regression_loss(*a) * (1 + 1e-5 * a[-1]))
    else:
        sample_time = Transport.sample_time

        def moved_time(self, *args, **kwargs):
            t = sample_time(self, *args, **kwargs)
            return t + 1e-5 * t * (1 - t)

        monkeypatch.setattr(Transport, "sample_time", moved_time)
    now = behaviour.on_one_thread(behaviour.train_a, tmp_path)
    changed = behaviour.compare(record, now, only=set(now))
    assert any("model.safetensors" in c for c in changed), changed
