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
        from numbaconv import _threads

        return f"{numba.threading_layer()} ({_threads.reason})"
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _thread_env():
    """What numbaconv added to the environment while Numba's threads started (config.OPENMP_ENV)."""
    from numbaconv import _threads

    if not _threads.applied:
        layer = _threads.current_layer()
        if layer is None:
            return "unchanged (no threading layer started)"
        if layer != "omp":
            return f"unchanged (the {layer} layer reads no OpenMP wait settings)"
        return "unchanged (set by the user, or config.OPENMP_ENV is empty)"
    return " ".join(f"{k}={v}" for k, v in _threads.applied.items()) + " (numbaconv)"


def _parallel_from():
    config = numbaconv.config
    awake = (f", {config.PARALLEL_MIN_ELEMENTS // config.PARALLEL_AWAKE_DIVISOR} within "
             f"{numbaconv._threads.spin_window * 1e6:.0f} us of the last parallel kernel (its threads still spin)"
             if numbaconv._threads.spin_window else "")
    return (f"{config.PARALLEL_MIN_ELEMENTS} elements a kernel{awake}; a multiple for light kernels "
            "(config.PARALLEL_MIN_ELEMENTS)")


def _cuda():
    from numbaconv._device import cuda_status

    ok, why = cuda_status()
    return f"{'yes' if ok else 'no'} ({why})"


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
            ("blas idle threads", numbaconv._threads.blas_reason),
            ("threading layer", _threading_layer()),
            ("thread start env", _thread_env()),
            ("threads", numba.get_num_threads()),
            ("parallel from", _parallel_from()),
            ("cuda available", _cuda()),
            ("kernel cache", _kernel_cache()),
        ]
    )
    return 0


def _worked_example():
    """The lecture's 5x5 image and 3x3 filter; True when conv2d reproduces its feature map."""
    image = np.array(EXAMPLE_IMAGE, dtype=np.float32)[None, None]
    kernel = np.array(EXAMPLE_FILTER, dtype=np.float32)[None, None]
    feature_map = numbaconv.conv2d(image, kernel)[0, 0]
    print("The lecture's worked example: a 5x5 image convolved with a 3x3 filter (stride 1, no padding)")
    for title, array in (("image", image[0, 0]), ("filter", kernel[0, 0]), ("conv2d(image, filter)", feature_map)):
        print(f"{title}:")
        print(array.astype(int))
    matches = np.array_equal(feature_map, np.array(EXAMPLE_RESULT, dtype=np.float32))
    print("matches the worked example:", "yes" if matches else "NO")
    return matches


def _ascii(image):
    """An 8x8 digit (values in [0, 1]) as text, two characters per pixel."""
    shades = " .:-=+*#%@"
    return ["".join(shades[min(int(v * len(shades)), len(shades) - 1)] * 2 for v in row) for row in image]


def _train_digits(args):
    """LeNet-5 trained on scikit-learn's handwritten digits; returns the held-out accuracy."""
    from numbaconv import datasets, models, nn, optim

    X_train, y_train, X_test, y_test = datasets.digits(size=32, seed=args.seed)
    print(f"Training LeNet-5 on scikit-learn's handwritten digits: {len(X_train)} training images, each "
          f"also shifted by 2 pixels four ways, and {len(X_test)} held-out images; 8x8 scans enlarged to 32x32")
    X_train, y_train = datasets.with_shifts(X_train, y_train, 2)
    numbaconv.manual_seed(args.seed)
    model = models.lenet5(num_classes=10, in_channels=1)
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    history = numbaconv.fit(model, nn.CrossEntropyLoss(), optimizer, X_train, y_train, epochs=args.epochs,
                            batch_size=args.batch_size, validation=(X_test, y_test), seed=args.seed,
                            scheduler=optim.StepLR(optimizer, step_size=1, gamma=0.5))
    for epoch in range(args.epochs):
        print(f"epoch {epoch + 1:>2}/{args.epochs}  loss {history['loss'][epoch]:.4f}  "
              f"train {100 * history['accuracy'][epoch]:5.1f}%  held-out {100 * history['val_accuracy'][epoch]:5.1f}%  "
              f"{history['time'][epoch]:.2f} s")
    predicted = numbaconv.predict(model, X_test).argmax(axis=1)
    correct = int((predicted == y_test).sum())
    accuracy = correct / len(y_test)
    print(f"held-out accuracy: {100 * accuracy:.2f}% ({correct} of {len(y_test)} images)")
    print(f"time per epoch: {statistics.median(history['time']):.2f} s (median of {args.epochs})")
    print("a few held-out images, with the label and the prediction:")
    right, wrong = np.flatnonzero(predicted == y_test), np.flatnonzero(predicted != y_test)
    shown = [int(i) for i in right[: 4 - min(len(wrong), 1)]] + [int(i) for i in wrong[:1]]  # a mistake too
    rows = [_ascii(X_test[i, 0, ::4, ::4]) for i in shown]
    for line in zip(*rows):
        print("   ".join(line))
    print("   ".join(f"label {y_test[i]} -> {predicted[i]}".ljust(16) for i in shown))
    return accuracy


def demo(args):
    matches = _worked_example()
    print()
    _train_digits(args)
    return 0 if matches else 1


def _load_input(path, info):
    """A .npy file (read without pickle) as a batch of the model's input: a single sample gains
    the batch axis, and the values take the model's dtype."""
    x = np.load(path, allow_pickle=False)
    if info.shape is not None and x.ndim == len(info.shape) - 1:
        x = x[None]
    return np.ascontiguousarray(x, dtype=info.dtype or x.dtype)


def _run_batches(model, x, batch_size):
    """Every output of ``model`` on ``x``, run ``batch_size`` samples at a time; and the seconds taken."""
    name = model.inputs[0].name
    parts, start = [], time.perf_counter()
    for i in range(0, max(len(x), 1), batch_size):
        parts.append(model.run({name: x[i:i + batch_size]}))
    seconds = time.perf_counter() - start
    return {o.name: np.concatenate([p[o.name] for p in parts]) for o in model.outputs}, seconds


def _top_k(scores, k):
    """'top-k classes a, b, c (scores ...)' for one sample's scores (logits or probabilities)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return (f"top-{len(order)} classes {', '.join(str(int(i)) for i in order)} "
            f"(scores {', '.join(f'{scores[i]:.4g}' for i in order)})")


def _save(path, outputs):
    if len(outputs) == 1:
        np.save(path, next(iter(outputs.values())))
    else:  # every output by name, in one archive
        np.savez(os.path.splitext(path)[0] + ".npz", **outputs)


def predict_command(args):
    """numbaconv predict: an ONNX model on a .npy file or on every .npy file of a directory."""
    from .training import _progress_bar

    if args.batch_size < 1 or args.top_k < 0:
        print("numbaconv predict: --batch-size must be >= 1 and --top-k >= 0", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        model = numbaconv.onnx.load(args.model)
        loaded = time.perf_counter() - start
        if len(model.inputs) != 1:
            raise ValueError(f"the model has {len(model.inputs)} inputs; predict feeds models of one input")
        info = model.inputs[0]
        print(f"model: {args.model} ({len(model.graph.nodes)} nodes after folding and fusion, loaded in "
              f"{1e3 * loaded:.1f} ms); input {info.name} {info.shape}")
        if os.path.isdir(args.input):
            files = sorted(f for f in os.listdir(args.input) if f.endswith(".npy"))
            if not files:
                raise ValueError(f"no .npy files in {args.input}")
            if args.output:
                os.makedirs(args.output, exist_ok=True)
            bar, total, count = _progress_bar(True, len(files), "predict"), 0.0, 0
            lines = []
            for f in files:
                x = _load_input(os.path.join(args.input, f), info)
                outputs, seconds = _run_batches(model, x, args.batch_size)
                total, count = total + seconds, count + len(x)
                first = next(iter(outputs.values()))
                if args.top_k and first.ndim == 2:
                    lines.append(f"{f}: {_top_k(first[0], args.top_k)}")
                if args.output:
                    _save(os.path.join(args.output, f), outputs)
                bar.update(1, {})
            bar.close()
            print("\n".join(lines))
            print(f"{len(files)} files, {count} samples: {1e3 * total:.1f} ms, {1e3 * total / max(count, 1):.2f} ms "
                  "per sample")
            return 0
        x = _load_input(args.input, info)
        outputs, seconds = _run_batches(model, x, args.batch_size)
    except (ValueError, TypeError, OSError) as e:
        print(f"numbaconv predict: {e}", file=sys.stderr)
        return 2
    print(f"input: {x.shape} {x.dtype}")
    for name, y in outputs.items():
        print(f"output {name}: {y.shape} {y.dtype}")
    print(f"time: {1e3 * seconds:.2f} ms for {len(x)} samples in batches of {args.batch_size} "
          f"({1e3 * seconds / max(len(x), 1):.3f} ms per sample)")
    first = next(iter(outputs.values()))
    if args.top_k and first.ndim == 2:
        for i in range(min(len(first), 10)):
            print(f"sample {i}: {_top_k(first[i], args.top_k)}")
        if len(first) > 10:
            print(f"... and {len(first) - 10} more samples")
    if args.output:
        _save(args.output, outputs)
        print(f"saved: {args.output}")
    return 0


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
        "demo", help="the lecture's worked example, then LeNet-5 trained on handwritten digits"
    )
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's initial learning rate, halved after each epoch (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the shuffling")
    p.set_defaults(func=demo)

    from .benchmark import command as bench_command

    p = commands.add_parser(
        "bench", help="time the convolutions on named layer shapes next to PyTorch: table, JSON, plot"
    )
    bench_command.add_arguments(p)
    p.set_defaults(func=bench_command.main)

    p = commands.add_parser(
        "predict", help="run an ONNX model on a .npy file (or a directory of them): shapes, timing, top-k classes"
    )
    p.add_argument("model", help="the .onnx file")
    p.add_argument("input", help="a .npy file (one sample or a batch) or a directory of .npy files")
    p.add_argument("--output", help="where to save the outputs: a .npy file (a directory for a directory input)")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per sample (default 5; 0 for none)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per model call (default 32)")
    p.set_defaults(func=predict_command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)
