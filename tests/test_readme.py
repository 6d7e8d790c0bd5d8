"""README.md's example runs as written (with fewer training steps)."""

import pathlib
import re

import jax.numpy as jnp


def test_readme_example_runs():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    assert "steps=3000" in code
    code = code.replace("steps=3000", "steps=20").replace("print(", "str(")
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    xs = env["xs"]
    assert xs.shape == (2000, 2) and bool(jnp.all(jnp.isfinite(xs)))
    assert "reverse SDE" in env["p"].describe()
