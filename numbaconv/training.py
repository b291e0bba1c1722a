"""Training helpers: ``fit``, ``evaluate`` and ``predict`` over NumPy arrays, in mini-batches.

X: (N, ...) samples, the model's input dtype; y: (N, ...) targets, integer class indices for
CrossEntropyLoss and NLLLoss (a classification task) or floats for MSELoss. Both are NumPy
arrays: for a model on the GPU (``model.to("cuda")``) each batch is copied there, and only the
outputs and the loss come back, for the metrics. One training step is the loop every numbaconv
model is trained with::

    out = model(xb); loss = loss_fn(out, yb)
    model.zero_grad(); model.backward(loss_fn.backward(), input_grad=False); optimizer.step()

Loss and accuracy are means over samples (over every target position when y has more than one
dimension), so they do not depend on the batch size. X and y are never modified.
"""

import contextlib
import sys
import time
from numbers import Integral

import numpy as np

from . import _random
from .nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from ._device import CUDA, to_device, to_host
from .nn.module import Module, device_of

__all__ = ["fit", "evaluate", "predict"]


# --------------------------------------------------------------------------- checks


def _int(op, name, value, minimum):
    if not isinstance(value, Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_model(op, model):
    if not isinstance(model, Module):
        raise TypeError(f"{op}: model must be a numbaconv.nn.Module, got {type(model).__name__}")


def _check_loss_fn(op, loss_fn):
    if not callable(loss_fn) or not callable(getattr(loss_fn, "backward", None)):
        raise TypeError(f"{op}: loss_fn must be a loss module with a backward method (such as "
                        f"numbaconv.nn.CrossEntropyLoss()), got {type(loss_fn).__name__}")


def _check_x(op, name, X):
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray of samples, got {type(X).__name__}")
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{op}: {name} must hold real numbers, got dtype {X.dtype}")
    if X.ndim < 1 or X.shape[0] < 1:
        raise ValueError(f"{op}: {name} must have shape (N, ...) with N >= 1 samples, got shape {X.shape}")
    return X.shape[0]


def _check_xy(op, x_name, y_name, X, y, loss_fn):
    """X (N, ...) and y (N, ...) as the loss needs them; returns N."""
    n = _check_x(op, x_name, X)
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{op}: {y_name} must be a numpy.ndarray of targets, got {type(y).__name__}")
    if y.ndim < 1 or y.shape[0] != n:
        raise ValueError(f"{op}: {x_name} and {y_name} must hold the same number of samples: "
                         f"{x_name} has shape {X.shape}, {y_name} has shape {y.shape}")
    if y.dtype.kind not in "fiu":
        raise TypeError(f"{op}: {y_name} must hold class indices (integers) or float targets, got dtype {y.dtype}")
    name = type(loss_fn).__name__
    if isinstance(loss_fn, (CrossEntropyLoss, NLLLoss)) and y.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} needs {y_name} of integer class indices, got dtype {y.dtype}")
    if isinstance(loss_fn, MSELoss) and y.dtype.kind != "f":
        raise TypeError(f"{op}: {name} needs float {y_name} of the model's dtype, got dtype {y.dtype}")
    return n


def _is_classification(y):
    """Integer targets are class indices: accuracy is then reported."""
    return y.dtype.kind in "iu"


def _check_progress(op, progress):
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"{op}: progress must be None (automatic), True or False, got {progress!r}")
    if progress is None:
        try:
            return bool(sys.stderr is not None and sys.stderr.isatty())
        except (AttributeError, ValueError):  # a replaced or closed stderr
            return False
    return bool(progress)


def _shuffle_generator(op, seed):
    """seed: None (numbaconv's generator, so manual_seed applies), an int or a Generator."""
    return _random.generator(op, seed, "seed")


# --------------------------------------------------------------------------- batches and metrics


@contextlib.contextmanager
def _mode(model, training):
    """Run with the model in train or eval mode, then give every submodule its own mode back
    (a model may hold a frozen submodule in eval mode on purpose)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _batches(n, batch_size, order=None):
    """Index for each batch: slices in order (views, no copy), or pieces of a permutation."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield slice(start, stop) if order is None else order[start:stop]


def _loss_value(op, loss, loss_fn, count):
    """The batch loss as a float, times what turns it into a sum over samples."""
    if np.ndim(loss) != 0:
        raise ValueError(f"{op}: loss_fn must return a scalar (reduction 'mean' or 'sum'), "
                         f"got shape {np.shape(loss)}")
    # a "sum" loss is already a sum over the batch; a "mean" one is weighted by the batch's size
    return float(to_host(loss)) * (1 if getattr(loss_fn, "reduction", "mean") == "sum" else count)


def _correct(op, out, yb):
    """(correct predictions, predictions) for scores (B, C, ...) against class indices (B, ...)."""
    if not isinstance(out, np.ndarray) or out.ndim < 2 or out.shape[0] != yb.shape[0] or out.shape[2:] != yb.shape[1:]:
        raise ValueError(f"{op}: integer targets of shape {yb.shape} need model outputs of class scores "
                         f"(N, C{''.join(f', {s}' for s in yb.shape[1:])}), got {np.shape(out)}")
    return int(np.count_nonzero(out.argmax(axis=1) == yb)), yb.size


def _metrics(loss_sum, samples, correct, predictions, classification):
    metrics = {"loss": loss_sum / samples}
    if classification:
        metrics["accuracy"] = correct / predictions
    return metrics


def _on(device, a):
    """A batch where the model is: the host's slice, or a copy on the GPU."""
    return to_device(a) if device == CUDA else a


def _evaluate(op, model, loss_fn, X, y, batch_size, classification):
    device = device_of(model)
    loss_sum, correct, predictions = 0.0, 0, 0
    with _mode(model, False):
        for index in _batches(X.shape[0], batch_size):
            xb, yb = _on(device, X[index]), _on(device, y[index])
            out = model(xb)
            loss_sum += _loss_value(op, loss_fn(out, yb), loss_fn, yb.shape[0])
            if classification:
                hit, count = _correct(op, to_host(out), to_host(yb))
                correct, predictions = correct + hit, predictions + count
    return _metrics(loss_sum, X.shape[0], correct, predictions, classification)


# --------------------------------------------------------------------------- progress


def _format(metrics):
    short = {"accuracy": "acc", "val_accuracy": "val_acc"}
    return {short.get(name, name): f"{value:.4f}" for name, value in metrics.items()}


class _NoBar:
    def update(self, count, metrics):
        pass

    def close(self, metrics=None):
        pass


class _TqdmBar:
    def __init__(self, tqdm, total, desc):
        self._bar = tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, count, metrics):
        self._bar.set_postfix(_format(metrics), refresh=False)  # update() redraws, at its own pace
        self._bar.update(count)

    def close(self, metrics=None):
        if metrics is not None:
            self._bar.set_postfix(_format(metrics), refresh=False)  # close() draws the last state
        self._bar.close()


class _TextBar:
    """A one-line bar on stderr for when tqdm is not installed, redrawn at most 10 times a second."""

    width = 24

    def __init__(self, total, desc):
        self._total, self._desc, self._done, self._drawn, self._length = total, desc, 0, 0.0, 0

    def _draw(self, metrics, end=""):
        filled = self.width * self._done // self._total
        text = " ".join(f"{name} {value}" for name, value in _format(metrics).items())
        line = f"{self._desc} [{'#' * filled}{'.' * (self.width - filled)}] {self._done}/{self._total} {text}"
        # spaces over what is left of a longer previous line
        sys.stderr.write(f"\r{line.ljust(self._length)}{end}")
        sys.stderr.flush()
        self._length = len(line)

    def update(self, count, metrics):
        self._done += count
        now = time.perf_counter()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(metrics)

    def close(self, metrics=None):
        if metrics is None:
            sys.stderr.write("\n")
        else:
            self._draw(metrics, end="\n")


def _progress_bar(show, total, desc):
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return _TqdmBar(tqdm, total, desc)


# --------------------------------------------------------------------------- public


def fit(model, loss_fn, optimizer, X, y, epochs=1, batch_size=64, validation=None, shuffle=True, seed=None,
        progress=None, scheduler=None):
    """Train ``model`` on X (N, ...) and y (N, ...) for ``epochs`` passes in mini-batches.

    Each batch runs forward, loss, backward (without the data's gradient) and
    ``optimizer.step()``. The model is in train mode meanwhile; every submodule gets its mode
    back at the end. shuffle draws a new order each epoch from a Generator: ``seed`` (an int or
    a numpy Generator) or, for None, numbaconv's generator, so ``numbaconv.manual_seed`` before
    building the model makes the whole run reproducible. validation: (Xv, yv), evaluated in
    eval mode after each epoch. progress: None shows a bar when stderr is a terminal, True
    always (tqdm when installed, else a plain text bar), False never. scheduler: an object
    whose ``step()`` is called after each epoch (``numbaconv.optim.StepLR``), or None.

    Returns the history, a dict of per-epoch lists: "loss" (the mean over samples),
    "accuracy" (classification, i.e. integer y, only), "val_loss" and "val_accuracy" (with
    validation), and "time" (seconds for the epoch, validation included).
    """
    op = "fit"
    _check_model(op, model)
    _check_loss_fn(op, loss_fn)
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"{op}: optimizer must have a step method (such as numbaconv.optim.SGD), "
                        f"got {type(optimizer).__name__}")
    n = _check_xy(op, "X", "y", X, y, loss_fn)
    epochs = _int(op, "epochs", epochs, 0)
    batch_size = _int(op, "batch_size", batch_size, 1)
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise TypeError(f"{op}: validation must be None or a pair (X_val, y_val), got {type(validation).__name__}")
        X_val, y_val = validation
        _check_xy(op, "validation X", "validation y", X_val, y_val, loss_fn)
        if _is_classification(y_val) != _is_classification(y):
            raise TypeError(f"{op}: validation y must be of the same kind as y (class indices or floats), "
                            f"got dtype {y_val.dtype} for y of dtype {y.dtype}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"{op}: shuffle must be a bool, got {shuffle!r}")
    rng = _shuffle_generator(op, seed)
    show = _check_progress(op, progress)
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"{op}: scheduler must have a step method (such as numbaconv.optim.StepLR), "
                        f"got {type(scheduler).__name__}")

    classification = _is_classification(y)
    history = {"loss": []}
    if classification:
        history["accuracy"] = []
    if validation is not None:
        history["val_loss"] = []
        if classification:
            history["val_accuracy"] = []
    history["time"] = []

    device = device_of(model)  # a model on the GPU gets each batch copied there
    with _mode(model, True):
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(n) if shuffle else None
            bar = _progress_bar(show, n, f"epoch {epoch + 1}/{epochs}")
            loss_sum, seen, correct, predictions = 0.0, 0, 0, 0
            try:
                for index in _batches(n, batch_size, order):
                    xb, yb = _on(device, X[index]), _on(device, y[index])
                    out = model(xb)
                    loss = loss_fn(out, yb)
                    loss_sum += _loss_value(op, loss, loss_fn, yb.shape[0])  # checks it is a scalar
                    model.zero_grad()
                    model.backward(loss_fn.backward(), input_grad=False)
                    optimizer.step()
                    seen += yb.shape[0]
                    if classification:
                        hit, count = _correct(op, to_host(out), to_host(yb))
                        correct, predictions = correct + hit, predictions + count
                    bar.update(yb.shape[0], _metrics(loss_sum, seen, correct, predictions, classification))
                metrics = _metrics(loss_sum, n, correct, predictions, classification)
                if validation is not None:
                    val = _evaluate(op, model, loss_fn, X_val, y_val, batch_size, classification)
                    metrics.update({f"val_{name}": value for name, value in val.items()})
            except BaseException:
                bar.close(None)  # end the bar's line, so the traceback starts on its own
                raise
            bar.close(metrics)
            for name, value in metrics.items():
                history[name].append(value)
            history["time"].append(time.perf_counter() - start)
            if scheduler is not None:
                scheduler.step()
    return history


def evaluate(model, loss_fn, X, y, batch_size=256):
    """The loss (mean over samples) of ``model`` on X (N, ...) and y (N, ...), in eval mode.

    Returns {"loss": float} plus "accuracy" (the fraction of argmax predictions equal to y)
    when y holds integer class indices. The model's modes are restored afterwards.
    """
    op = "evaluate"
    _check_model(op, model)
    _check_loss_fn(op, loss_fn)
    _check_xy(op, "X", "y", X, y, loss_fn)
    batch_size = _int(op, "batch_size", batch_size, 1)
    return _evaluate(op, model, loss_fn, X, y, batch_size, _is_classification(y))


def predict(model, X, batch_size=256):
    """The model's outputs for X (N, ...), computed in eval mode in batches of ``batch_size`` and
    concatenated in order along the first axis: (N, ...), the model's output dtype. A NumPy
    array also for a model on the GPU: each batch is copied there and its output back."""
    op = "predict"
    _check_model(op, model)
    n = _check_x(op, "X", X)
    batch_size = _int(op, "batch_size", batch_size, 1)
    with _mode(model, False):
        device = device_of(model)
        outputs = [to_host(model(_on(device, X[index]))) for index in _batches(n, batch_size)]
    return np.concatenate(outputs, axis=0)
