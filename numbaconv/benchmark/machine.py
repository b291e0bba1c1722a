"""Facts about the machine and the process a benchmark runs in, for its JSON and its header."""

import os
import platform
import subprocess
from pathlib import Path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The widest x86 vector extension the CPU reports, if any."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    for name in ("avx512f", "avx2", "avx", "sse4_2"):
                        if name in flags:
                            return name
                    return ""
    except OSError:
        pass
    return ""


def load_average():
    """The 1-minute load average, or None: how busy the machine was (other processes compete)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def source_version():
    """The commit of the numbaconv checkout being measured, "+ uncommitted changes" when its
    package files differ from it; None outside a git checkout."""
    package = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        changed = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + (" + uncommitted changes" if changed.stdout.strip() else "")


def machine_info():
    """CPU, cores, load, versions, thread counts and the threading layer, as a dict."""
    import numba
    import numpy as np

    import numbaconv
    from numbaconv import _threads
    from numbaconv.cli import _blas

    try:
        import torch
    except ImportError:
        torch = None
    layer = _threads.current_layer()
    return {
        "cpu_model": cpu_model(),
        "cpu_vector": cpu_flags(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "numbaconv": numbaconv.__version__,
        "source": source_version(),
        "numpy": np.__version__,
        "blas": _blas(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "threading_layer": layer,
        "threading_reason": _threads.reason,
        "blas_spin_cycles": _threads.blas_spin_cycles,
        "blas_threads": _threads.blas_reason,
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
    }
