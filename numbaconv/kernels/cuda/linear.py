"""Linear layer on the GPU: the tiled GEMM of ``gemm.py`` on (rows, features) matrices.

The host side is NumPy's matmul (BLAS) in ``functional/linear.py``; here each product is one
GEMM launch with the transposes as flags, so no operand is copied: y = x @ w.T,
grad_x = grad_out @ w, grad_w = grad_out.T @ x; the bias and its gradient are the
convolutions' per-channel kernels on (rows, features) seen as (N, K).
"""

from . import _launch
from .gemm import gemm


def forward(x, w, b):
    """y (rows, out) = x (rows, in) @ w (out, in).T + b (b may be None)."""
    y = _launch.empty((x.shape[0], w.shape[0]), x.dtype)
    gemm(x, w, y, trans_b=True)
    if b is not None:
        _launch.add_bias(y, b)
    return y


def grad_input(go, w):
    gx = _launch.empty((go.shape[0], w.shape[1]), go.dtype)
    gemm(go, w, gx)
    return gx


def grad_weight(go, x):
    gw = _launch.empty((go.shape[1], x.shape[1]), go.dtype)
    gemm(go, x, gw, trans_a=True)
    return gw


def grad_bias(go):
    return _launch.channel_sum(go)
