"""The `scoreflow` command: derive (text, LaTeX, errors) and the demo's smoke run."""

import json
import subprocess
import sys

from scoreflow._cli import main


def test_derive_sde(capsys):
    assert (
        main(["derive", "--drift", "-(1 + t)*x", "--diffusion", "sqrt(2 + 2*t)"]) == 0
    )
    out = capsys.readouterr().out
    for key in ("forward SDE", "kernel", "reverse SDE", "PF-ODE", "t0 ="):
        assert key in out
    assert "exp(" in out  # alpha = exp(-t - t^2/2) was derived


def test_derive_interpolant_latex(capsys):
    assert main(["derive", "--alpha", "1 - t", "--sigma", "t", "--latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\\begin{aligned}") and "\\nabla_x" in out


def test_derive_errors(capsys):
    assert main(["derive", "--drift=-x *", "--diffusion", "1"]) == 2
    assert "could not parse" in capsys.readouterr().err
    assert main(["derive", "--drift=-x"]) == 2
    assert "--diffusion" in capsys.readouterr().err
    assert (
        main(
            ["derive", "--alpha", "1", "--sigma", "1 - t", "--t0", "0.1", "--t1", "0.9"]
        )
        == 2
    )
    assert "negative" in capsys.readouterr().err
    assert main(["derive", "--process", "Nope"]) == 2
    assert "built-ins" in capsys.readouterr().err


def test_demo_smoke(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "scoreflow._cli", "demo", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 60
    for f in ("samples.png", "trajectories.png"):
        assert (out / f).stat().st_size > 10_000


def test_derive_accepts_a_negative_expression_after_a_space(capsys):
    # Issue 14, defect 8: argparse read "-x" in `--drift -x` as an option.
    assert main(["derive", "--drift", "-x", "--diffusion", "sqrt(2)"]) == 0
    spaced = capsys.readouterr().out
    assert main(["derive", "--drift=-x", "--diffusion=sqrt(2)"]) == 0
    assert capsys.readouterr().out == spaced
    assert "exp(-t)" in spaced  # alpha of the OU process
    assert main(["derive", "--alpha", "-t + 1", "--sigma", "t"]) == 0
    assert "kernel" in capsys.readouterr().out
