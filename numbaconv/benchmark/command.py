"""``numbaconv bench``: the benchmark suite from the command line (the parser is in ``numbaconv.cli``).

The measurement runs in a fresh interpreter that imports PyTorch before numbaconv, as ``bench/``
does: the two load one OpenMP runtime, which keeps the settings of whoever loads it first, so
PyTorch, the reference, keeps its own (``--import-order numbaconv`` gives numbaconv its own
instead, and PyTorch then shares numbaconv's OpenMP wait: a short spin, then sleep).
"""

import argparse
import json
import subprocess
import sys

from .shapes import DIRECTIONS, SUITES

#: The child: import in the chosen order, then run this command in-process.
CHILD = """
import sys
if sys.argv[1] == "torch":
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
from numbaconv.cli import main
sys.exit(main(["bench", "--in-process", *sys.argv[2:]]))
"""


def add_arguments(p):
    """The options of ``numbaconv bench``, on the argparse subparser ``p``."""
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--suite", default="all", help=f"shape set: {', '.join(SUITES)} (default all)")
    p.add_argument("--quick", action="store_true", help="3 timed rounds per case instead of about a second")
    p.add_argument("--algorithms", default="direct,im2col,auto",
                   help="comma-separated: direct, im2col, winograd, blocked (forward only), auto, tune "
                        "(default direct,im2col,auto)")
    p.add_argument("--directions", default="forward,backward", help="forward, backward or both (default)")
    p.add_argument("--json", metavar="FILE", help="write the machine, the rows and the summary as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of time / PyTorch's per shape (needs matplotlib)")
    p.add_argument("--compile-times", action="store_true",
                   help="instead of the suite: each kernel's first call with an empty and a warm cache")
    p.add_argument("--threads", type=int, help="Numba's and PyTorch's thread count (default: Numba's)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--import-order", choices=("torch", "numbaconv"), default="torch",
                   help="which library loads OpenMP first, keeping its settings (default torch)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


def _argv(args):
    """The command line of ``args`` again, for the child process."""
    argv = ["--device", args.device, "--suite", args.suite, "--algorithms", args.algorithms,
            "--directions", args.directions, "--import-order", args.import_order]
    for flag in ("quick", "compile_times", "no_torch", "no_progress"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for option in ("json", "plot", "threads"):
        if getattr(args, option):
            argv += ["--" + option, str(getattr(args, option))]
    return argv


def _fail(message):
    print(f"numbaconv bench: error: {message}", file=sys.stderr)
    return 2


def _check(args):
    """The options' values, or an error message, before any child or measurement starts."""
    if args.device not in ("cpu", "cuda"):
        return f"--device must be cpu or cuda, got {args.device!r}"
    if args.suite not in SUITES:
        return f"--suite must be one of {', '.join(SUITES)}, got {args.suite!r}"
    from ..functional.conv import ALGORITHM_CHOICES

    for option, value, choices in (("--algorithms", args.algorithms, ALGORITHM_CHOICES),
                                   ("--directions", args.directions, DIRECTIONS)):
        given = [v.strip() for v in value.split(",") if v.strip()]
        if not given or any(v not in choices for v in given):
            return f"{option} must be a comma-separated selection of {', '.join(choices)}, got {value!r}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be at least 1, got {args.threads}"
    if args.plot and not args.compile_times:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--plot needs matplotlib: pip install 'numbaconv[bench]'"
    if args.device == "cuda":
        from .._device import cuda_status

        ok, why = cuda_status()
        if not ok:
            return f"--device cuda: CUDA is not available: {why}"
    return None


def main(args):
    problem = _check(args)
    if problem:
        return _fail(problem)
    if not args.in_process:
        return subprocess.run([sys.executable, "-c", CHILD, args.import_order, *_argv(args)]).returncode
    from . import report
    from .compile_times import compile_times
    from .machine import load_average, machine_info
    from .runner import run

    if args.compile_times:
        load = load_average()
        rows = compile_times()
        machine = {**machine_info(), "load_average": load}
        lines = ["# numbaconv kernel compile times", "", *report.header(machine, run=False), "",
                 "First call of each op in a fresh process: with an empty kernel cache (compiles), then with "
                 "the cache the first process wrote.", "", *report.compile_table(rows)]
        document = {"machine": machine, "compile_times": rows}
        print("\n".join(lines))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(document, f, indent=1)
        return 0
    load = load_average()  # before the run adds its own load
    try:
        rows = run(suite=args.suite, device=args.device, quick=args.quick,
                   algorithms=[a.strip() for a in args.algorithms.split(",") if a.strip()],
                   directions=[d.strip() for d in args.directions.split(",") if d.strip()],
                   torch=not args.no_torch, progress=False if args.no_progress else None, threads=args.threads)
    except (ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    machine = {**machine_info(), "load_average": load}
    peak = rows[0]["gemm_peak_gflops"] if rows else None
    settings = {"suite": args.suite, "device": args.device, "quick": args.quick, "threads": args.threads,
                "algorithms": args.algorithms, "directions": args.directions, "import_order": args.import_order}
    title = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v not in (None, False))
    lines = [f"# numbaconv bench {title.replace('--quick True', '--quick')}", "",
             *report.header(machine, peak, args.device, args.quick), "", *report.table(rows), "",
             *report.summary_lines(rows)]
    print("\n".join(lines))
    if args.json:
        document = {"machine": machine, "settings": settings,
                    "gemm_peak_gflops": peak, "rows": rows, "summary": report.summary(rows),
                    "targets": [dict(zip(("target", "measured", "limit", "met"), t)) for t in report.targets(rows)]}
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)
    if args.plot:
        report.plot(rows, args.plot)
    return 1 if any(r["error"] for r in rows) else 0
