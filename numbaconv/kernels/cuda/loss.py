"""Loss kernels on the GPU: the gathers, reductions and gradients that ``functional.loss`` does
with NumPy on the host (so this module has no CPU twin).

The class losses see scores as a C-contiguous (N, C, I) device array, I = prod(d1, ...), and
targets as (N, I) integers. A backward's ``g`` is the loss output's gradient, flat: one value
for "mean" and "sum" (``per_element`` False), one per loss element for "none"; it is divided by
``divisor`` (the element count for "mean", 1 otherwise), in the data's dtype as on the host.
One thread per element; the sum of a reduction is one block's float64 tree (``block_sum``).
"""

from numba import cuda, float64

from ._launch import THREADS, block_sum, line, pow2_at_least


@cuda.jit
def _nll(scores, target, out):
    """out[n, i] = -scores[n, target[n, i], i]."""
    N, I = target.shape
    t = cuda.grid(1)
    if t < N * I:
        n, i = t // I, t % I
        out[n, i] = -scores[n, target[n, i], i]


@cuda.jit
def _squared_error(x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        d = x[i] - y[i]
        out[i] = d * d


@cuda.jit
def _sum(a, divisor, out):
    """out[0] = sum(a) / divisor, by one block."""
    shared = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for i in range(cuda.threadIdx.x, a.size, cuda.blockDim.x):
        acc += a[i]
    total = block_sum(acc, shared)
    if cuda.threadIdx.x == 0:
        out[0] = out.dtype.type(total) / divisor


@cuda.jit
def _class_grad(base, has_base, target, g, per_element, divisor, out):
    """out[n, c, i] = (base[n, c, i] - [c == target]) * scale (cross entropy, base the softmax),
    or -scale at the target and 0 elsewhere (nll_loss, no base); scale = g / divisor."""
    N, C, I = out.shape
    t = cuda.grid(1)
    if t < out.size:
        n, c, i = t // (C * I), (t // I) % C, t % I
        scale = (g[n * I + i] if per_element else g[0]) / divisor
        hit = c == target[n, i]
        if has_base:
            out[n, c, i] = (base[n, c, i] - (out.dtype.type(1) if hit else out.dtype.type(0))) * scale
        else:
            out[n, c, i] = -scale if hit else out.dtype.type(0)


@cuda.jit
def _mse_grad(x, y, g, per_element, divisor, out):
    """out = (x - y) * 2 * (g / divisor)."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = (x[i] - y[i]) * out.dtype.type(2) * ((g[i] if per_element else g[0]) / divisor)


# --------------------------------------------------------------------------- entry points


def nll(scores, target, out):
    """out (N, I) = -scores[n, target[n, i], i] for scores (N, C, I)."""
    _nll[line(out.size)](scores, target, out)


def squared_error(x, y, out):
    """out = (x - y) ** 2, flat."""
    _squared_error[line(out.size)](x, y, out)


def total(a, divisor, out):
    """out (1,) = sum of flat a / divisor."""
    _sum[1, pow2_at_least(a.size, THREADS)](a, out.dtype.type(divisor), out)


def class_grad(base, target, g, per_element, divisor, out):
    """The gradient of cross entropy (base: the softmax of the scores) or of nll_loss (base None)."""
    _class_grad[line(out.size)](out if base is None else base, base is not None, target, g, per_element,
                                out.dtype.type(divisor), out)


def mse_grad(x, y, g, per_element, divisor, out):
    """out = 2 * (x - y) * g / divisor, flat."""
    _mse_grad[line(out.size)](x, y, g, per_element, out.dtype.type(divisor), out)
