"""The worked examples of docs/concepts/extending.md run as written, and what they
inherit is right."""

import pathlib
import re

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import scoreflow as sf

PAGE = pathlib.Path(__file__).parents[1] / "docs" / "concepts" / "extending.md"


def _run_page():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), ns)
    return ns


def test_extending_page_examples():
    ns = _run_page()
    p, pred = ns["p"], ns["pred"]
    assert isinstance(p, sf.AbstractScalarProcess)
    # The hand-written g2 is the interpolant's (sigma^2)' - 2 (alpha'/alpha) sigma^2.
    ts = jnp.linspace(0.01, 0.9, 7)
    s2 = lambda t: p.sigma(t) ** 2
    ds2 = jax.vmap(jax.grad(s2))(ts)
    np.testing.assert_allclose(
        p.g2(ts), ds2 - 2 * p.alpha_dot(ts) / p.alpha(ts) * s2(ts), rtol=1e-10
    )
    # The inherited inverse log-SNR inverts.
    lam = p.log_snr(ts)
    np.testing.assert_allclose(p.t_from_log_snr(lam), ts, rtol=1e-8)
    # The new solver is DDIM (eta = 0) written independently.
    ys = ns["ys"]
    ref = sf.sample(jr.key(0), p, pred, (1,), num=256, solver=sf.DDIM(), steps=20)
    np.testing.assert_allclose(ys, ref, rtol=1e-9, atol=1e-12)
    # Samples of the two-point mixture land near +-1 with the right weights.
    xs = ns["xs"]
    assert np.all(np.isfinite(xs))
    assert abs(float(jnp.mean(xs > 0)) - 0.5) < 0.12
    np.testing.assert_allclose(jnp.abs(xs).mean(), 1.0, atol=0.1)
