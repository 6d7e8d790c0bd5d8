"""The `scoreflow` command: `scoreflow derive ...` and `scoreflow demo`."""

import argparse
import sys

BUILTINS = ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM")


def _derive(args) -> int:
    import scoreflow as sf

    given = {
        k: getattr(args, k) for k in ("drift", "diffusion", "alpha", "sigma", "process")
    }
    sde = given["drift"] is not None or given["diffusion"] is not None
    interp = given["alpha"] is not None or given["sigma"] is not None
    if sum([sde, interp, given["process"] is not None]) != 1:
        print(
            "scoreflow derive: give exactly one of --drift/--diffusion, --alpha/--sigma, "
            "or --process NAME.",
            file=sys.stderr,
        )
        return 2
    try:
        if given["process"] is not None:
            if given["process"] not in BUILTINS:
                print(
                    f"scoreflow derive: unknown process {given['process']!r}; built-ins "
                    f"are {', '.join(BUILTINS)}.",
                    file=sys.stderr,
                )
                return 2
            p = getattr(sf, given["process"])()
        elif sde:
            if given["drift"] is None or given["diffusion"] is None:
                print(
                    "scoreflow derive: --drift needs --diffusion (and vice versa).",
                    file=sys.stderr,
                )
                return 2
            p = sf.SDE(given["drift"], given["diffusion"], t0=args.t0, t1=args.t1)
        else:
            if given["alpha"] is None or given["sigma"] is None:
                print(
                    "scoreflow derive: --alpha needs --sigma (and vice versa).",
                    file=sys.stderr,
                )
                return 2
            p = sf.Interpolant(given["alpha"], given["sigma"], t0=args.t0, t1=args.t1)
    except (ValueError, TypeError) as e:
        print(f"scoreflow derive: {e}", file=sys.stderr)
        return 2
    print(p.latex() if args.latex else p.describe())
    return 0


_EXPRESSION_OPTIONS = ("--drift", "--diffusion", "--alpha", "--sigma")


def _join_expression_values(argv):
    """`--drift -x` as `--drift=-x`: argparse would read a value starting with "-"
    as an option, but an expression such as `-x` or `-(1 + t)*x` is a valid drift."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if (
            a in _EXPRESSION_OPTIONS
            and i + 1 < len(argv)
            and not argv[i + 1].startswith("--")
        ):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scoreflow",
        description="Declarative SDE/ODE mathematics for diffusion and flow matching.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "derive",
        help="derive the kernel, reverse SDE and PF-ODE of a process",
        description=(
            "Print the derived Gaussian kernel, reverse SDE and probability-flow ODE. "
            "Expressions are sympy syntax in t (time, 0 = data) and x, e.g. "
            "--drift '-(1 + t)*x' --diffusion 'sqrt(2 + 2*t)'."
        ),
    )
    d.add_argument("--drift", help="drift f(t, x)")
    d.add_argument("--diffusion", help="diffusion g(t) >= 0")
    d.add_argument(
        "--alpha", help="signal scale alpha(t) of x_t = alpha x0 + sigma eps"
    )
    d.add_argument("--sigma", help="noise scale sigma(t)")
    d.add_argument("--process", help=f"a built-in: {', '.join(BUILTINS)}")
    d.add_argument("--t0", type=float, default=None)
    d.add_argument("--t1", type=float, default=None)
    d.add_argument("--latex", action="store_true", help="print LaTeX instead of text")

    demo = sub.add_parser(
        "demo",
        help="train a small model on a 2-D toy set, sample, write figures and metrics",
    )
    demo.add_argument("--out", default="scoreflow-demo", help="output folder")
    demo.add_argument("--steps", type=int, default=None, help="training steps")
    demo.add_argument(
        "--smoke", action="store_true", help="a few seconds' run (for CI)"
    )
    demo.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(_join_expression_values(argv))
    if args.command == "derive":
        return _derive(args)
    from ._demo import run_demo

    return run_demo(out=args.out, steps=args.steps, smoke=args.smoke, seed=args.seed)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
