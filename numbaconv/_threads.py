"""Start Numba's worker threads with ``config.OPENMP_ENV`` (see there for why)."""

import os

from . import config

#: Variables by which a user already chose how OpenMP threads wait: numbaconv then adds nothing.
_USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

#: What ``start`` put in the environment while the threads started ({} when it added nothing).
applied = {}


def start():
    """Launch Numba's threading layer now, with ``config.OPENMP_ENV`` set while it loads.

    An OpenMP runtime reads its environment once, when it is loaded; the variables are removed
    again right after, so the rest of the process sees the environment it had.
    """
    global applied
    if any(name in os.environ for name in _USER_CHOICES):
        return
    added = {k: v for k, v in config.OPENMP_ENV.items() if k not in os.environ}
    applied = added
    os.environ.update(added)
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
    except Exception:  # a Numba without this hook: threads then start at the first kernel
        pass
    finally:
        for name in added:
            os.environ.pop(name, None)
