"""The command line: ``python -m numbaconv info`` and ``demo`` in new processes, ``main`` here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import numbaconv
from numbaconv.cli import main

from conftest import NO_TBB, has_gomp, has_tbb, skip_without_gomp, skip_without_tbb

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "numbaconv", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def parse_pairs(text):
    pairs = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


INFO_KEYS = [
    "numbaconv",
    "python",
    "numpy",
    "numba",
    "blas",
    "blas idle threads",
    "threading layer",
    "thread start env",
    "threads",
    "parallel from",
    "cuda available",
    "kernel cache",
]


def test_info_subprocess():
    done = run_cli("info")
    assert done.returncode == 0, done.stderr
    pairs = parse_pairs(done.stdout)
    assert list(pairs) == INFO_KEYS
    assert pairs["numbaconv"] == numbaconv.__version__
    assert pairs["threading layer"].split()[0] in {"tbb", "omp", "workqueue"}
    assert int(pairs["threads"]) >= 1
    assert int(pairs["parallel from"].split()[0]) >= 1
    assert pairs["cuda available"].startswith(("yes", "no"))


def test_info_values_are_aligned(capsys):
    main(["info"])
    lines = capsys.readouterr().out.splitlines()
    value_columns = {len(line) - len(line.partition(":")[2].lstrip()) for line in lines}
    assert len(value_columns) == 1


def test_info_reports_numba_cache_dir(tmp_path):
    env_cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(env_cache))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "numbaconv", "info"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    cache = parse_pairs(done.stdout)["kernel cache"]
    assert cache.startswith(str(env_cache))
    assert "NUMBA_CACHE_DIR" in cache


def test_info_in_process(capsys):
    assert main(["info"]) == 0
    pairs = parse_pairs(capsys.readouterr().out)
    assert list(pairs) == INFO_KEYS
    assert pairs["numpy"]


def test_demo_subprocess():
    """The README's main job: the worked example, then LeNet-5 trained on real handwritten
    digits to at least 97% held-out accuracy (the issue's bar), with its defaults."""
    done = run_cli("demo", timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[[4 3 4]\n [2 4 3]\n [2 3 4]]" in out
    assert "matches the worked example: yes" in out
    final = [line for line in out.splitlines() if line.startswith("held-out accuracy:")]
    assert len(final) == 1, out
    accuracy = float(final[0].split(":")[1].split("%")[0])
    assert accuracy >= 97.0, out
    assert "time per epoch:" in out
    assert len(re.findall(r"label \d -> \d", out)) == 4


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert numbaconv.__version__ in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2


WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "NUMBA_THREADING_LAYER")


def _layer_env(**extra):
    """The environment of a fresh interpreter that picks its own threading layer."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


@pytest.mark.parametrize("tbb", ["tbb", "no-tbb"])
def test_thread_start_env_is_restored(tbb):
    """numbaconv starts TBB's threads where the tbb package is installed, else OpenMP's with
    config.OPENMP_ENV, then gives the process its environment back; it leaves alone a choice
    the user made. Threads that spin a while after each kernel (TBB's, and OpenMP's with that
    wait) take work from a smaller size on."""
    if tbb == "tbb":
        skip_without_tbb()
    code = (
        (NO_TBB + "; " if tbb == "no-tbb" else "") +
        "import os, numba, numbaconv; from numbaconv import _threads, config; "
        "print(numba.threading_layer(), config.PARALLEL_MIN_ELEMENTS, _threads.spin_window, "
        "os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), _threads.applied)"
    )
    spinning = numbaconv.config.PARALLEL_MIN_ELEMENTS_SPINNING
    fresh = subprocess.run([sys.executable, "-c", code], env=_layer_env(), capture_output=True, text=True, check=True)
    layer, threshold, window, *rest = fresh.stdout.split()
    if tbb == "tbb":
        assert layer == "tbb" and rest == ["None", "None", "{}"]
        assert float(window) == numbaconv.config.SPIN_WINDOW_S["tbb"] and int(threshold) == spinning
    elif has_gomp():
        assert layer == "omp"
        assert rest == ["None", "None", "{'OMP_WAIT_POLICY':", "'PASSIVE',", "'GOMP_SPINCOUNT':", "'3000'}"]
        assert float(window) == numbaconv.config.SPIN_WINDOW_S["omp"] and int(threshold) == spinning
    mine = subprocess.run([sys.executable, "-c", code], env=_layer_env(GOMP_SPINCOUNT="5"),
                          capture_output=True, text=True, check=True)
    layer, threshold, window, *rest = mine.stdout.split()
    assert rest == ["None", "5", "{}"]
    if layer != "tbb":  # OpenMP with the user's wait: numbaconv assumes no spin
        assert int(threshold) > spinning and float(window) == 0


@pytest.mark.parametrize("tbb", ["tbb", "no-tbb"])
def test_openmp_loaded_first(tbb):
    """When another library loaded OpenMP before numbaconv (PyTorch does), OpenMP's threads spin
    and the passive wait cannot be applied any more: numbaconv starts TBB's threads, or without
    TBB the workqueue layer, and runs its parallel kernels one at a time there, because that
    layer aborts the process when two threads enter it at once. Eight threads then call kernels
    big enough to run in parallel."""
    code = """
import ctypes, os, threading
NO_TBB
ctypes.CDLL("libgomp.so.1", mode=os.RTLD_GLOBAL)  # what importing torch first does
import numpy as np, numba, numbaconv
from numbaconv import _threads
x = np.random.default_rng(0).standard_normal((4, 8, 32, 32)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
expected = numbaconv.conv2d(x, w, algorithm="direct")
bad = []
def work():
    for _ in range(20):
        if not np.array_equal(numbaconv.conv2d(x, w, algorithm="direct"), expected):
            bad.append(1)
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(numba.threading_layer(), _threads.serialize, len(bad))
""".replace("NO_TBB", NO_TBB if tbb == "no-tbb" else "")
    skip_without_gomp()
    if tbb == "tbb":
        skip_without_tbb()
    done = subprocess.run([sys.executable, "-c", code], env=_layer_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["tbb", "False", "0"] if tbb == "tbb" else ["workqueue", "True", "0"])


def test_exit_skips_collecting_what_numba_loaded():
    """numbaconv freezes what is alive at exit, so that the interpreter's shutdown does not spend
    a few tenths of a second collecting Numba's registries. A handler registered before the
    import runs after numbaconv's and sees the frozen objects; the conv2d's result is complete
    before that."""
    code = (
        "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
        "import numpy as np, numbaconv; "
        "print(numbaconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3))).item())"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9.0", "frozen", "True"]


QUIET_BLAS = """
import json, os, sys
if sys.argv[1] == "numpy-first":
    import numpy
if sys.argv[1] == "openmp-no-tbb":
    NO_TBB
if sys.argv[1].startswith("openmp"):
    import ctypes
    ctypes.CDLL("libgomp.so.1", mode=os.RTLD_GLOBAL)  # what importing torch first does
import numbaconv
import numpy as np
from numbaconv import _threads
lib = _threads._openblas()
a = np.random.default_rng(0).standard_normal((300, 200))
print(json.dumps({"openblas": lib is not None, "spins": _threads.blas_spins, "reason": _threads.blas_reason,
                  "split": _threads.blas_split, "threads": _threads.blas_threads is not None,
                  "timeout": lib.openblas_thread_timeout() if lib is not None else None,
                  "env": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "serialize": _threads.serialize,
                  "gemm": bool(np.allclose(a @ a.T, np.einsum("ik,jk->ij", a, a)))}))
"""


@pytest.mark.parametrize("case", ["fresh", "numpy-first", "user", "user-quiet", "openmp", "openmp-no-tbb"])
def test_blas_threads_sleep_when_idle(case):
    """Imported before NumPy, numbaconv has NumPy's OpenBLAS load with a short idle spin and
    gives the environment back, and im2col's copies go parallel. NumPy imported first, or a
    long spin the user chose, leaves OpenBLAS as it is, and numbaconv splits its own GEMMs over
    its own threads instead (so copies go parallel too); under Numba's workqueue layer (OpenMP
    loaded first, as by PyTorch, and no TBB) the copies stay serial. GEMMs work throughout."""
    if case.startswith("openmp"):
        skip_without_gomp()
    from numbaconv._threads import BLAS_THREAD_TIMEOUT

    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                        "KMP_BLOCKTIME", "NUMBA_THREADING_LAYER")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if case.startswith("user"):
        env["OPENBLAS_THREAD_TIMEOUT"] = "20" if case == "user" else "8"
    done = subprocess.run([sys.executable, "-c", QUIET_BLAS.replace("NO_TBB", NO_TBB), case], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["gemm"]
    assert got["env"] == env.get("OPENBLAS_THREAD_TIMEOUT")  # the environment as it was
    if not got["openblas"]:  # another BLAS: nothing to quiet
        assert got["spins"] and not got["split"] and "not OpenBLAS" in got["reason"]
        return
    assert got["threads"]  # NumPy's OpenBLAS gives its thread count functions
    expected_timeout = {"fresh": BLAS_THREAD_TIMEOUT, "numpy-first": 0, "user": 20, "user-quiet": 8,
                        "openmp": BLAS_THREAD_TIMEOUT, "openmp-no-tbb": BLAS_THREAD_TIMEOUT}[case]
    assert got["timeout"] == expected_timeout
    # the workqueue layer: OpenMP loaded first and no TBB
    assert got["serialize"] == (case == "openmp-no-tbb" or (case == "openmp" and not has_tbb()))
    assert got["split"] == (case in ("numpy-first", "user"))
    assert got["spins"] == got["serialize"]
    assert ("splits its GEMMs over its own threads" in got["reason"]) == got["split"]
    said = {"fresh": "(numbaconv)", "numpy-first": "NumPy was imported before numbaconv",
            "user": "chosen by the user", "user-quiet": "(OPENBLAS_THREAD_TIMEOUT)",
            "openmp": "stay serial under the workqueue layer" if got["serialize"] else "(numbaconv)",
            "openmp-no-tbb": "stay serial under the workqueue layer"}[case]
    assert said in got["reason"]
