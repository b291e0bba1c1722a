"""Element-wise kernels on the GPU: the twin of ``kernels.cpu.elementwise``, same entry points.

Arrays are flat (1-D) C-contiguous device arrays; one thread per element, one launch for the
whole tensor. The op codes are the CPU module's, so a public op passes the same code to either
twin. On the GPU the branch on the code is uniform across a warp (every thread takes the same
one), so one kernel per family costs nothing over one kernel per op.

Constants are made with ``out.dtype.type`` so that float32 arithmetic stays float32 (a Python
literal would promote it to float64, which is many times slower on most GPUs). NaN and inf go
where the CPU kernels send them: the comparisons are the same.
"""

import math

from numba import cuda

from ..cpu.elementwise import ELU, LEAKY_RELU, RELU, SIGMOID  # the op codes both twins share
from ._launch import line


@cuda.jit
def _forward(op, x, a, out):
    i = cuda.grid(1)
    if i < out.size:
        v = x[i]
        zero, one = out.dtype.type(0), out.dtype.type(1)
        if op == RELU:
            out[i] = zero if v < zero else v  # NaN stays NaN and -0 stays -0, as torch.relu
        elif op == LEAKY_RELU:
            out[i] = v if v > zero else v * a
        elif op == ELU:
            out[i] = v if v > zero else a * math.expm1(v)
        elif op == SIGMOID:
            out[i] = one / (one + math.exp(-v))
        else:  # TANH
            out[i] = math.tanh(v)


@cuda.jit
def _backward(op, go, t, a, out):
    i = cuda.grid(1)
    if i < out.size:
        v, g = t[i], go[i]
        zero, one = out.dtype.type(0), out.dtype.type(1)
        if op == RELU:  # torch's threshold_backward: 0 where x <= 0 (even for a NaN grad_out)
            out[i] = zero if v <= zero else g
        elif op == LEAKY_RELU:
            out[i] = g if v > zero else g * a
        elif op == ELU:
            out[i] = g * a * math.exp(v) if v <= zero else g
        elif op == SIGMOID:
            out[i] = g * (one - v) * v
        else:  # TANH
            out[i] = g * (one - v * v)


@cuda.jit
def _masked_scale(a, mask, scale, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * (scale if mask[i] else out.dtype.type(0))


def forward(op, x, a, out):
    """out = op(x), as ``kernels.cpu.elementwise.forward``."""
    _forward[line(out.size)](op, x, a, out)


def backward(op, go, t, a, out):
    """out = grad_out * op'(t), as ``kernels.cpu.elementwise.backward`` (t: x or y by op)."""
    _backward[line(out.size)](op, go, t, a, out)


def masked_scale(a, mask, scale, out):
    """out = a * scale where mask, a * 0 elsewhere: dropout's forward and backward."""
    _masked_scale[line(out.size)](a, mask, scale, out)
