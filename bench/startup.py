"""Start-up cost: wall time of a fresh process that imports numbaconv and runs one small conv2d.

One run warms the kernel cache, then ``--runs`` fresh processes are timed and the median reported.
With ``--cold`` the processes get an empty NUMBA_CACHE_DIR of their own, which measures the
compilation a first-time user waits for instead.

    python bench/startup.py            # warm cache, 5 runs
    python bench/startup.py --cold     # empty cache every run

Exits 1 when the median exceeds ``--target`` seconds (1.5 by default: the target of a warm start).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
import numbaconv
t1 = time.perf_counter()
numbaconv.conv2d(np.ones((1, 3, 16, 16), np.float32), np.ones((4, 3, 3, 3), np.float32), padding=1)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "conv2d": t2 - t1, "done": time.time()}))
"""


def run_once(env):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    parts = json.loads(done.stdout.strip().splitlines()[-1])
    # the interpreter's shutdown, after the conv2d: time.time() is the clock both processes share
    parts["exit"] = time.time() - parts.pop("done")
    return {"wall": wall, **parts}


def measure(runs, cold):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    samples = []
    if cold:
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as cache:
                samples.append(run_once({**env, "NUMBA_CACHE_DIR": cache}))
        return None, samples
    first = run_once(env)  # fills the kernel cache if it is empty or stale
    samples = [run_once(env) for _ in range(runs)]
    return first, samples


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="an empty kernel cache for every run")
    parser.add_argument("--target", type=float, default=1.5, help="seconds; exit 1 above it")
    args = parser.parse_args(argv)

    first, samples = measure(args.runs, args.cold)
    median = {
        key: statistics.median(s[key] for s in samples) for key in ("wall", "import", "conv2d", "exit")
    }
    cache = "cold (empty NUMBA_CACHE_DIR)" if args.cold else "warm"
    if first is not None:
        print(f"first run (fills the cache if needed): {first['wall']:.2f} s")
    print(f"{cache} kernel cache, median of {args.runs} fresh processes:")
    for label, key in [("wall (interpreter start to exit)", "wall"), ("import numbaconv", "import"),
                       ("first conv2d call", "conv2d"), ("interpreter shutdown", "exit")]:
        print(f"  {label + ':':<34}{median[key]:.2f} s")
    walls = ", ".join(f"{s['wall']:.2f}" for s in samples)
    print(f"  all walls: {walls} s")
    ok = median["wall"] <= args.target
    print(f"target {args.target:.1f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
