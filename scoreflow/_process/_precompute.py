"""Regenerate the shipped derivations of the built-ins (`_derive.BUILTIN_CACHE`):
`python -m scoreflow._process._precompute`. Derives each built-in with default
parameters into an empty cache and copies the cache files into the package."""

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
        for name in ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM"):
            p = getattr(sf, name)()
            # The closed-form inverse log-SNR, derived (and cached) exactly as the
            # process asks for it.
            p.t_from_log_snr(p.log_snr(0.5 * (p.t0 + p.t1)))
            print("derived", name, flush=True)
        out = _derive.BUILTIN_CACHE
        out.mkdir(exist_ok=True)
        for f in sorted(pathlib.Path(tmp).glob("*.pkl")):
            shutil.copy(f, out / f.name)
        print(len(list(out.glob("*.pkl"))), "files in", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
