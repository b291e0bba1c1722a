"""Command line: ``numbaconv info`` describes the installation, ``numbaconv demo`` shows it working.

Also reachable as ``python -m numbaconv``.
"""

import argparse
import importlib
import os
import pkgutil
import platform
import statistics
import sys
import time

import numpy as np

import numbaconv

# The lecture's worked example: a 5x5 binary image, a 3x3 filter, and the 3x3 feature map it gives.
EXAMPLE_IMAGE = [
    [1, 1, 1, 0, 0],
    [0, 1, 1, 1, 0],
    [0, 0, 1, 1, 1],
    [0, 0, 1, 1, 0],
    [0, 1, 1, 0, 0],
]
EXAMPLE_FILTER = [
    [1, 0, 1],
    [0, 1, 0],
    [1, 0, 1],
]
EXAMPLE_RESULT = [
    [4, 3, 4],
    [2, 4, 3],
    [2, 3, 4],
]


def _print_pairs(pairs):
    width = max(len(key) for key, _ in pairs)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {value}")


def _blas():
    """The BLAS NumPy calls: as loaded (threadpoolctl, when importable), else as built."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        for lib in threadpool_info():
            if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
                return (
                    f"{lib['internal_api']} {lib['version']} ({lib['num_threads']} threads, loaded)"
                )
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception as exc:  # older NumPy without mode="dicts", or an unusual build
        return f"unknown ({type(exc).__name__})"


def _threading_layer():
    """The Numba threading layer in use; Numba picks one only when a parallel kernel first runs."""
    import numba

    try:
        x = np.ones((1, 1, 4, 4), dtype=np.float32)
        w = np.ones((1, 1, 3, 3), dtype=np.float32)
        numbaconv.conv2d(x, w)
        return numba.threading_layer()
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _thread_env():
    """What numbaconv added to the environment while Numba's threads started (config.OPENMP_ENV)."""
    from numbaconv import _threads

    if not _threads.applied:
        return "unchanged (set by the user, or config.OPENMP_ENV is empty)"
    return " ".join(f"{k}={v}" for k, v in _threads.applied.items()) + " (numbaconv)"


def _cuda():
    try:
        from numba import cuda
    except Exception as exc:
        return f"no ({type(exc).__name__})"
    try:
        if not cuda.is_available():
            return "no"
        name = cuda.get_current_device().name
        return f"yes ({name.decode(errors='replace') if isinstance(name, bytes) else name})"
    except Exception as exc:
        return f"no ({type(exc).__name__})"


def _kernel_dispatchers():
    """The cached Numba dispatchers of numbaconv.kernels.cpu, in module order."""
    from numba.core.registry import CPUDispatcher

    import numbaconv.kernels.cpu as cpu

    found = []
    for info in pkgutil.iter_modules(cpu.__path__, cpu.__name__ + "."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and getattr(obj, "_cache", None) is not None:
                if getattr(obj._cache, "_cache_path", None):
                    found.append(obj)
    return found


def _kernel_cache():
    """Where Numba writes numbaconv's ``cache=True`` files, and which rule put them there.

    Numba tries, in order: ``NUMBA_CACHE_DIR``, the ``__pycache__`` beside the kernel's source
    file if writable, then a user-wide directory. A kernel's own cache object holds the outcome.
    """
    try:
        dispatchers = _kernel_dispatchers()
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    if dispatchers:
        cache = dispatchers[0]._cache
        path = cache._cache_path
        locator = type(cache._impl.locator).__name__
    else:
        from numba.core.caching import CacheImpl

        import numbaconv.kernels.cpu as cpu

        def probe():
            pass

        source = os.path.join(cpu.__path__[0], "__init__.py")
        for cls in CacheImpl._locator_classes:
            locator = cls.from_function(probe, source)
            if locator is not None:
                path, locator = locator.get_cache_path(), cls.__name__
                break
        else:
            return "none (caching disabled: no writable location)"
    reason = {
        "UserProvidedCacheLocator": "NUMBA_CACHE_DIR",
        "InTreeCacheLocator": "beside the kernels",
        "UserWideCacheLocator": "user-wide fallback, package directory not writable",
    }.get(locator, locator)
    return f"{path} ({reason})"


def info(args):
    import numba

    _print_pairs(
        [
            ("numbaconv", numbaconv.__version__),
            ("python", f"{platform.python_version()} ({sys.executable})"),
            ("numpy", np.__version__),
            ("numba", numba.__version__),
            ("blas", _blas()),
            ("threading layer", _threading_layer()),
            ("thread start env", _thread_env()),
            ("threads", numba.get_num_threads()),
            ("cuda available", _cuda()),
            ("kernel cache", _kernel_cache()),
        ]
    )
    return 0


def _median_seconds(fn, repeats):
    fn()  # warm-up: compiles, or loads from the kernel cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def demo(args):
    image = np.array(EXAMPLE_IMAGE, dtype=np.float32)[None, None]
    kernel = np.array(EXAMPLE_FILTER, dtype=np.float32)[None, None]
    feature_map = numbaconv.conv2d(image, kernel)[0, 0]
    print("A 5x5 image convolved with a 3x3 filter (stride 1, no padding):")
    print()
    print("image:")
    print(image[0, 0].astype(int))
    print("filter:")
    print(kernel[0, 0].astype(int))
    print("conv2d(image, filter):")
    print(feature_map.astype(int))
    matches = np.array_equal(feature_map, np.array(EXAMPLE_RESULT, dtype=np.float32))
    print("matches the worked example:", "yes" if matches else "NO")
    print()

    n, c, size, k, ksize, pad = args.batch, 16, 32, 32, 3, 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, size, size), dtype=np.float32)
    w = rng.standard_normal((k, c, ksize, ksize), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    out_size = size + 2 * pad - ksize + 1
    flops = 2 * n * k * c * ksize * ksize * out_size * out_size
    print(
        f"Batch conv2d: x {x.shape}, weight {w.shape}, padding={pad} -> "
        f"({n}, {k}, {out_size}, {out_size}), {flops / 1e9:.3f} GFLOP"
    )
    results = {}
    for algorithm in ("direct", "im2col"):
        out = {}

        def run(algorithm=algorithm, out=out):
            out["y"] = numbaconv.conv2d(x, w, b, padding=pad, algorithm=algorithm)

        seconds = _median_seconds(run, args.repeats)
        results[algorithm] = out["y"]
        print(f"  {algorithm:<7} {seconds * 1e3:9.2f} ms  {flops / seconds / 1e9:7.2f} GFLOP/s")
    diff = float(np.max(np.abs(results["direct"] - results["im2col"])))
    print(f"  max |direct - im2col| = {diff:.3g}")
    return 0 if matches else 1


def build_parser():
    parser = argparse.ArgumentParser(
        prog="numbaconv", description="Numba-compiled convolutions with PyTorch semantics."
    )
    parser.add_argument("--version", action="version", version=f"numbaconv {numbaconv.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "info", help="versions, BLAS, threading layer, CUDA, kernel cache directory"
    )
    p.set_defaults(func=info)

    p = commands.add_parser(
        "demo", help="a worked example, then a timed batch conv2d with each algorithm"
    )
    p.add_argument(
        "--batch", type=int, default=8, help="batch size of the timed conv2d (default 8)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs after the warm-up; the median is shown"
    )
    p.set_defaults(func=demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)
