"""The command line: ``python -m numbaconv info`` and ``demo`` in new processes, ``main`` here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import numbaconv
from numbaconv.cli import main

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
    "threading layer",
    "thread start env",
    "threads",
    "cuda available",
    "kernel cache",
]


def test_info_subprocess():
    done = run_cli("info")
    assert done.returncode == 0, done.stderr
    pairs = parse_pairs(done.stdout)
    assert list(pairs) == INFO_KEYS
    assert pairs["numbaconv"] == numbaconv.__version__
    assert pairs["threading layer"] in {"tbb", "omp", "workqueue"}
    assert int(pairs["threads"]) >= 1
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


def test_thread_start_env_is_restored():
    """numbaconv starts Numba's threads with config.OPENMP_ENV, then gives the process its
    environment back, and leaves alone a choice the user made."""
    code = (
        "import os, numbaconv; from numbaconv import _threads; "
        "print(os.environ.get('OMP_WAIT_POLICY'), _threads.applied)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ["None", "{'OMP_WAIT_POLICY':", "'PASSIVE'}"]
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "5"},
                          capture_output=True, text=True, check=True)
    assert mine.stdout.split() == ["None", "{}"]
