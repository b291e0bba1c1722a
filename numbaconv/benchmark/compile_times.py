"""Compile time of the kernels: the first call of each op in a fresh process, with an empty and
with a warm kernel cache.

Both processes get the same new ``NUMBA_CACHE_DIR``: the first finds it empty and compiles every
kernel it calls (what a first-time user waits for), the second loads what the first wrote (what
every later process pays). Each entry is one op's first call on small float32 arrays, so its
time is almost all compilation or cache loading; "import numbaconv" is the import itself.
"""

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
times = []
start = time.perf_counter()
import numpy as np
import numbaconv
times.append(("import numbaconv", time.perf_counter() - start))
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
go = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
calls = []
for algorithm in ("direct", "im2col"):
    calls.append((f"conv2d forward, {algorithm}", lambda a=algorithm: numbaconv.conv2d(x, w, padding=1, algorithm=a)))
    calls.append((f"conv2d backward, {algorithm}",
                  lambda a=algorithm: numbaconv.conv2d_backward(go, x, w, padding=1, algorithm=a)))
calls += [
    ("max_pool2d forward + backward", lambda: numbaconv.max_pool2d_backward(numbaconv.max_pool2d(x, 2), x, 2)),
    ("batch_norm forward + backward", lambda: numbaconv.batch_norm_backward(
        go, go, None, None, np.ones(4, np.float32), np.zeros(4, np.float32), True, 1e-5)),
    ("relu forward + backward", lambda: numbaconv.relu_backward(numbaconv.relu(go), go)),
]
for name, call in calls:
    start = time.perf_counter()
    call()
    times.append((name, time.perf_counter() - start))
print(json.dumps(times))
"""


def _child(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the compile-time process failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_times():
    """[{"what", "cold_s", "warm_s"}]: each op's first call with an empty, then a warm, cache."""
    with tempfile.TemporaryDirectory(prefix="numbaconv-cache-") as cache_dir:
        cold = _child(cache_dir)
        warm = dict(_child(cache_dir))
    return [{"what": what, "cold_s": seconds, "warm_s": warm[what]} for what, seconds in cold]
