"""Autotune: time the candidate algorithms on the first call of a convolution, keep the fastest.

Like cuDNN's benchmark mode (``torch.backends.cudnn.benchmark = True``): the first call of each
(geometry, direction, dtype) runs every algorithm on the call's own arrays, one untimed warm-up
call each (compilation, first touch) and then ``config.AUTOTUNE_REPEATS`` timed calls, and the
lowest median wins for the rest of the process. The geometry includes the batch size, as
cuDNN's key does. The result is then computed by the winner, so a tuned call returns exactly
what ``algorithm=<the winner>`` returns.

One lock guards the choices: a thread that needs a choice another thread is timing waits for
it, and two timings never run at once (they would slow each other down and time the contention).
"""

import math
import statistics
import threading
import time

from .. import config

_lock = threading.Lock()
_choices = {}  # (geometry, direction, dtype name) -> {"algorithm", "ms", "hits"}


def set_autotune(enabled):
    """Turn autotune mode on (True) or off (False) for ``algorithm="auto"`` (``config.AUTOTUNE``).

    Choices already made are kept; ``clear_autotune_cache`` forgets them.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_autotune: enabled must be True or False, got {enabled!r}")
    config.AUTOTUNE = enabled


def autotune_cache():
    """The choices made so far: {(geometry, direction, dtype): {"algorithm": the winner,
    "ms": {algorithm: median ms of its timed calls}, "hits": later calls that reused it}}, a copy."""
    with _lock:
        return {key: {**entry, "ms": dict(entry["ms"])} for key, entry in _choices.items()}


def clear_autotune_cache():
    """Forget every choice: the next call of each convolution times the candidates again."""
    with _lock:
        _choices.clear()


def _time(kernel, args, bar):
    kernel(*args)  # warm-up: compilation or cache load, first touch of the workspace
    times = []
    for _ in range(config.AUTOTUNE_REPEATS):
        start = time.perf_counter()
        kernel(*args)
        times.append(time.perf_counter() - start)
        if times[0] > 2 * bar:  # hopeless: more calls would only cost time
            break
    return statistics.median(times)


def _tune(args, direction, algorithms, first):
    order = [first, *(name for name in algorithms if name != first)]
    seconds, best = {}, math.inf
    for name in order:
        seconds[name] = _time(getattr(algorithms[name], direction), args, best)
        best = min(best, seconds[name])
    return {"algorithm": min(order, key=seconds.get), "ms": {n: 1e3 * s for n, s in seconds.items()}, "hits": 0}


def tuned(geom, direction, algorithms, first):
    """A kernel entry with the kernels' signature that runs the fastest of ``algorithms``
    ({name: kernel module}) for this geometry, direction and the dtype of its first array,
    timing them on the first call. ``first`` (the rule-based choice) is timed first: it sets
    the bar that hopeless candidates are dropped against."""

    def run(*args):
        key = (geom, direction, args[0].dtype.name)
        with _lock:
            entry = _choices.get(key)
            if entry is None:
                entry = _choices[key] = _tune(args, direction, algorithms, first)
            else:
                entry["hits"] += 1
            name = entry["algorithm"]
        getattr(algorithms[name], direction)(*args)

    return run
