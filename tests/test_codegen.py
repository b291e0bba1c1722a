"""What the compiler makes of the kernels whose speed depends on one instruction.

LLVM turns a store of ``v if take else a[i]`` back into ``a[i]`` (and a store under a branch
on a variable, even a loop-invariant one) into a masked store, VMASKMOVPS / VPMASKMOVQ with
AVX and AVX2, which AMD's cores up to Zen 3 run microcoded, a dozen cycles a vector: max
pooling's forward ran at a fifth of its speed there (``kernels/cpu/pool.py``). Each such kernel
is compiled afresh here (a cache's code cannot be inspected), in a child process with an empty
kernel cache, and its assembly is searched for a masked store. On a host whose widest vectors
are AVX-512 LLVM writes masked stores another way (fast there), and on one without AVX it has
none: the search finds nothing to refuse.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, re
    import numpy as np
    import numbaconv as nc
    from numbaconv import config
    from numbaconv.kernels.cpu import pool, softmax

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    for threshold in (1 << 40, 1):  # the one-thread twin, then the parallel kernel
        config.PARALLEL_MIN_ELEMENTS = threshold
        nc.max_pool2d(x, 2, 2, return_indices=True)
        nc.max_pool2d(x, 2, 2)
        nc.max_pool2d(x, 3, 2, 1)
        nc.softmax(x, 1)
    store = re.compile(r"vp?maskmov[a-z]*\\s+%[xy]mm\\d+,\\s*%[xy]mm\\d+,\\s*[-0-9]*\\(")
    found, compiled = {}, 0
    for kernel in (pool._max_forward, pool._max_separable, softmax.forward):
        cells = dict(zip(kernel.__code__.co_freevars, (c.cell_contents for c in kernel.__closure__)))
        for dispatcher in (cells["compiled"], cells["serial_twin"]()):
            for signature, asm in dispatcher.inspect_asm().items():
                compiled += 1
                lines = [line.strip() for line in asm.splitlines() if store.search(line)]
                if lines:
                    found[f"{dispatcher.py_func.__name__}{signature}"] = lines[:4]
    print(json.dumps({"compiled": compiled, "masked_stores": found}))
""")


def test_max_pooling_and_softmax_compile_to_plain_stores(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["compiled"] >= 6, report  # every kernel, both routes: the search saw code
    assert not report["masked_stores"], report["masked_stores"]
