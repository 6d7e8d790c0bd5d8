"""The public API: every public name has a docstring and an entry in the API reference
(`docs/api/*.md`), and every name that left the top level still works, with a
`DeprecationWarning` naming its replacement.

Docstrings are read with griffe, the loader mkdocstrings renders the reference with,
so attribute docstrings (`t`, `LOG_SNR_MAX`, ...) count and a dataclass's generated
signature does not.
"""

import pathlib
import re
import types
import warnings

import pytest

import scoreflow as sf

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBMODULES = (
    "toy",
    "checks",
    "metrics",
    "nets",
    "train",
    "testing",
    "internal",
    "peers",
)


def _public_names():
    """(module path, name) of every public name: the top level (less modules) and
    each sub-namespace's `__all__` (or, for `sf.internal`, its public attributes)."""
    out = []
    for name in dir(sf):
        if name.startswith("_") or isinstance(getattr(sf, name), types.ModuleType):
            continue
        out.append(("scoreflow", name))
    for sub in SUBMODULES:
        mod = getattr(sf, sub)
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [
                n
                for n in dir(mod)
                if not n.startswith("_")
                and not isinstance(getattr(mod, n), types.ModuleType)
            ]
        out.extend((f"scoreflow.{sub}", n) for n in names)
    return out


PUBLIC = _public_names()


def _documented() -> set[str]:
    """Every dotted path named by a mkdocstrings directive in `docs/api/*.md`: the
    `::: path` itself and, under `options: members:`, `path.member`."""
    paths = set()
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        current = None
        in_members = False
        for line in page.read_text().splitlines():
            m = re.match(r"^::: ([\w.]+)\s*$", line)
            if m:
                current, in_members = m.group(1), False
                paths.add(current)
                continue
            if current is None:
                continue
            if re.match(r"^\s+members:\s*$", line):
                in_members = True
            elif in_members and (m := re.match(r"^\s+- (\w+)\s*$", line)):
                paths.add(f"{current}.{m.group(1)}")
            elif line.strip() and not line.startswith(" "):
                current, in_members = None, False
    return paths


def test_public_names_are_few_and_the_moved_ones_are_gone():
    # `testing` is a submodule imported on first use (it needs hypothesis)
    top = [n for n in dir(sf) if not n.startswith("_") and n != "testing"]
    # Issue 12 left 69 objects + 7 namespaces (toy, checks, metrics, nets, train,
    # internal, sympy) + the symbols t, x, and the ladder added 4 (the abstract
    # Gaussian and scalar rungs, DeclaredProcess, DeclaredSDE). The same wave then
    # added new concepts, one name each: 6 samplers, 3 grids, 2 path functions and
    # the default (issue 13), `chunked` (issue 16), 8 for one/few-step generation
    # (issue 17; `few_step_grid` the ninth), and issue 15 the `peers` namespace and
    # `step`. Classes that a factory returns live in `sf.internal`.
    assert 60 <= len(top) <= 107, len(top)
    assert not set(top) & set(sf._MOVED_TO_INTERNAL)
    assert "importlib" not in top


def test_every_public_name_is_in_the_api_reference():
    documented = _documented()
    missing = [
        f"{mod}.{name}" for mod, name in PUBLIC if f"{mod}.{name}" not in documented
    ]
    assert not missing, (
        "public names with no `::: scoreflow....` entry in docs/api/*.md: "
        f"{missing}. Add a directive (or a `members:` item) for each."
    )


def test_every_public_name_has_a_docstring():
    griffe = pytest.importorskip("griffe")
    pkg = griffe.load(
        "scoreflow",
        search_paths=[str(ROOT)],
        resolve_aliases=True,
        resolve_external=False,
    )
    undocumented = []
    for mod, name in PUBLIC:
        obj = pkg
        for part in mod.split(".")[1:]:
            obj = obj.members[part]
        member = obj.members[name]
        if member.is_alias and member.target_path.split(".")[0] != "scoreflow":
            continue  # an external object (e.g. a hypothesis strategy helper)
        doc = member.docstring
        if doc is None or not doc.value.strip():
            undocumented.append(f"{mod}.{name}")
    assert not undocumented, f"public names without a docstring: {undocumented}"


@pytest.mark.parametrize("name", sorted(sf._MOVED_TO_INTERNAL))
def test_moved_name_warns_and_returns_the_same_object(name):
    also = sf._MOVED_TO_INTERNAL[name]
    with pytest.warns(DeprecationWarning) as record:
        obj = getattr(sf, name)
    assert obj is getattr(sf.internal, name)
    message = str(record[0].message)
    assert message.startswith(f"sf.{name} is deprecated; use sf.internal.{name}")
    if also is not None:
        assert f"(or {also})" in message
    # The warning points at the caller, not at scoreflow/__init__.py.
    assert record[0].filename == __file__


def test_from_import_of_a_moved_name_warns():
    with pytest.warns(DeprecationWarning, match="sf.CFGPredictor is deprecated"):
        from scoreflow import CFGPredictor
    assert CFGPredictor is sf.internal.CFGPredictor


def test_unknown_name_still_raises_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'DSMloss'"):
            sf.DSMloss  # noqa: B018
