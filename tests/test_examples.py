"""Every example runs end to end in smoke mode and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> the figures it writes. Smoke times on a shared 2-core CPU: two_points_1d
# 17 s, cfg_2d 20 s, likelihood 31 s, quickstart 31 s (default run ~100 s);
# custom_process 39 s (mostly sympy's wall-clock time limits) and digits ~1.5-2 min
# (U-Net, sampler and likelihood compiles) are marked slow.
CASES = [
    pytest.param("two_points_1d.py", ["two_points_1d.png"], id="two_points_1d"),
    pytest.param("cfg_2d.py", ["cfg_2d.png"], id="cfg_2d"),
    pytest.param(
        "likelihood.py", ["likelihood.png"], id="likelihood", marks=pytest.mark.slow
    ),
    pytest.param(
        "quickstart.py",
        ["quickstart_samples.png", "quickstart_trajectories.png"],
        id="quickstart",
    ),
    pytest.param("digits.py", ["digits.png"], id="digits", marks=pytest.mark.slow),
    pytest.param(
        "custom_process.py", ["custom_process.png"], id="custom_process",
        marks=pytest.mark.slow,
    ),
    # SSM training + reverse-SDE sampling compiles: ~25 s CPU, ~2 min wall when the
    # shared machine is busy.
    pytest.param(
        "double_well.py", ["double_well.png"], id="double_well", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize("script, figures", CASES)
def test_example_smoke(script, figures, tmp_path):
    pytest.importorskip("matplotlib")
    if script == "digits.py":
        pytest.importorskip("sklearn")
    env = dict(os.environ)
    env["SCOREFLOW_SMOKE"] = "1"
    env["SCOREFLOW_FIGURES"] = str(tmp_path)  # never overwrite the committed figures
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (
        f"{script} --smoke failed (exit {proc.returncode}):\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    for name in figures:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000, f"{script} did not write {name}"
