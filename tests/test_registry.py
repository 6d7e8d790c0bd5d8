"""The registries of tests/helpers.py say what the ladder says: each process's
declared rung is the deepest rung it stands on, and each sampler's rung is what the
solver states (`process_rung`) or the SDE rung for a diffrax solver."""

import diffrax
import helpers
import pytest

import scoreflow as sf


@pytest.mark.parametrize("name", list(helpers.PROCESSES))
def test_declared_rung_is_the_ladders(name):
    p = helpers.process(name)
    rung = helpers.PROCESSES[name][1]
    deepest = next(r for r in helpers.RUNGS if isinstance(p, r))
    assert deepest is rung, (name, type(p), deepest, rung)
    assert helpers.process_names(rung).count(name) == 1


def test_registry_covers_every_kind():
    """Built-ins, a matrix linear SDE and CLD, sympy and callable declarations, and a
    process with no Gaussian kernel."""
    for name in helpers.BUILTIN_NAMES:
        assert name in helpers.PROCESSES
    kinds = {type(helpers.process(n)) for n in helpers.PROCESSES}
    assert {sf.LinearSDE, sf.CLD, sf.DeclaredProcess, sf.DeclaredSDE} <= kinds
    assert helpers.process_names(sf.AbstractProcess) == list(helpers.PROCESSES)
    assert set(helpers.PREDICTIONS) == {"score", "eps", "x0", "velocity", "v"}


@pytest.mark.parametrize("name", list(helpers.SAMPLERS))
def test_sampler_rung_and_order(name):
    s = helpers.SAMPLERS[name]
    if isinstance(s.solver, sf.AbstractDiffusionSolver):
        assert s.rung is s.solver.process_rung
    else:
        assert s.rung is sf.AbstractProcess
    # The expected order is the solver's own claim (deterministic samplers).
    if not s.stochastic:
        assert s.order == s.solver.order(None), name
    else:
        assert s.order is None
        assert isinstance(s.solver, sf.AbstractDiffusionSolver)
    assert isinstance(s.solver, diffrax.AbstractSolver)
