"""Regenerate the shipped derivations of the built-ins (`_derive.BUILTIN_CACHE`):
`python -m scoreflow._process._precompute`. Derives each built-in with default
parameters into an empty cache and copies the cache files into the package: the
derivations, stable forms, endpoint limits and closed-form inverse log-SNR, and the
recorded outcome of the declaration-time checks (`_checked-*`, keyed by the jax
version and the dtype setting: both settings are recorded). Also the straight path
of each built-in with a scalar kernel (`sf.straight_path(p)`, a `sf.RectifiedFlow`
on a sub-range: what `sf.sample`'s default integrates), whose stable forms and
checks depend on that range."""

import json
import os
import pathlib
import shutil
import sys
import tempfile


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SCOREFLOW_CACHE_DIR"] = tmp
        import scoreflow as sf
        from scoreflow._process import _derive

        if any(_derive.BUILTIN_CACHE.glob("*.pkl")):
            print("remove the old files first:", _derive.BUILTIN_CACHE, file=sys.stderr)
            return 2
        import jax

        for x64 in (False, True):
            jax.config.update("jax_enable_x64", x64)
            for name in ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM"):
                p = getattr(sf, name)()
                # The closed-form inverse log-SNR, derived (and cached) exactly as
                # the process asks for it.
                p.t_from_log_snr(p.log_snr(0.5 * (p.t0 + p.t1)))
                print("derived", name, "x64" if x64 else "", flush=True)
                if isinstance(p, sf.AbstractScalarProcess):
                    rf = sf.straight_path(p)
                    rf.t_from_log_snr(rf.log_snr(0.5 * (rf.t0 + rf.t1)))
                    print("derived straight_path", name, flush=True)
        out = _derive.BUILTIN_CACHE
        out.mkdir(exist_ok=True)
        for f in sorted(pathlib.Path(tmp).glob("*.pkl")):
            shutil.copy(f, out / f.name)
        import jaxlib

        # The versions the recorded checks (`_checked-*`) are keyed by.
        versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
        (out / "VERSIONS.json").write_text(json.dumps(versions) + "\n")
        print(len(list(out.glob("*.pkl"))), "files in", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
