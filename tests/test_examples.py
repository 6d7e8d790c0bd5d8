"""Every example runs end to end in smoke mode and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> the figures it writes. Smoke mode uses tiny sizes, so each run is bound by
# importing JAX and by XLA compiles; the test therefore asks XLA for unoptimised
# compiles (XLA_FLAGS=--xla_backend_optimization_level=0 below: ~22% less CPU time in
# all, digits 47 -> 35 CPU s). Measured one by one on the shared 2-core CPU box at load
# 10-14, with empty derivation caches: wall (CPU) two_points_1d 20 s (6 s), cfg_2d 38 s
# (9 s), likelihood 51 s (13 s), quickstart 38 s (13 s), custom_process 33 s (12 s),
# digits 92 s (35 s); ~90 s of CPU time in all. This file alone: 6 passed in 278 s
# at load 10-15.
CASES = [
    pytest.param("two_points_1d.py", ["two_points_1d.png"], id="two_points_1d"),
    pytest.param("cfg_2d.py", ["cfg_2d.png"], id="cfg_2d"),
    pytest.param("likelihood.py", ["likelihood.png"], id="likelihood"),
    pytest.param("cld_2d.py", ["cld_2d.png"], id="cld_2d"),
    pytest.param(
        "quickstart.py",
        ["quickstart_samples.png", "quickstart_trajectories.png"],
        id="quickstart",
    ),
    # The two longest smokes (bridge_2d 54 s, digits 34 s of the 13.5-minute default
    # suite, idle) run with -m slow; their parts are unit-tested in the default run
    # (tests/test_bridge.py's trained OT bridge, tests/test_nets.py's UNet).
    pytest.param("digits.py", ["digits.png"], id="digits", marks=pytest.mark.slow),
    pytest.param("custom_process.py", ["custom_process.png"], id="custom_process"),
    pytest.param(
        "bridge_2d.py", ["bridge_2d.png"], id="bridge_2d", marks=pytest.mark.slow
    ),
    pytest.param(
        "learned_schedule.py", ["learned_schedule.png"], id="learned_schedule"
    ),
    pytest.param("double_well.py", ["double_well.png"], id="double_well"),
    pytest.param("one_step_2d.py", ["one_step_2d.png"], id="one_step_2d"),
]


@pytest.mark.parametrize("script, figures", CASES)
def test_example_smoke(script, figures, tmp_path):
    pytest.importorskip("matplotlib")
    if script == "digits.py":
        pytest.importorskip("sklearn")
    if script == "bridge_2d.py":
        pytest.importorskip("ott")
        pytest.importorskip("scipy")
    env = dict(os.environ)
    env["SCOREFLOW_SMOKE"] = "1"
    env["SCOREFLOW_FIGURES"] = str(tmp_path)  # never overwrite the committed figures
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = " ".join(
        filter(None, [env.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
    )
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{script} --smoke failed (exit {proc.returncode}):\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    for name in figures:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000, (
            f"{script} did not write {name}"
        )
