"""Element-wise arithmetic on device arrays that NumPy does on the host: the sums of a skip
connection and of gradient accumulation, and the optimizers' fused update rules.

Numba device arrays have no arithmetic operators, so what ``a + b`` or ``p -= lr * g`` does on
the host is a kernel here; each runs over flat views, one thread per element, in one launch.
The host side is NumPy itself (``numbaconv._arith`` picks), so this module has no CPU twin.
The optimizer rules are the ones written out in ``numbaconv.optim``, element by element.
"""

import math

from numba import cuda

from ._launch import flat, line


@cuda.jit
def _add(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@cuda.jit
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    i = cuda.grid(1)
    if i < p.size:
        grad = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = grad if first else momentum * buf[i] + (1 - dampening) * grad
            buf[i] = b
            grad = grad + momentum * b if nesterov else b
        p[i] -= lr * grad


@cuda.jit
def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, amsgrad, step_size, root_correction2):
    i = cuda.grid(1)
    if i < p.size:
        grad = g[i] + weight_decay * p[i]
        m[i] += (1 - beta1) * (grad - m[i])
        v[i] = beta2 * v[i] + (1 - beta2) * grad * grad
        second = v[i]
        if amsgrad:
            second = max(vmax[i], second)
            vmax[i] = second
        p[i] -= step_size * m[i] / (math.sqrt(second) / root_correction2 + eps)


def _launch(kernel, n, *args):
    """One thread per element of ``n``, in one launch; nothing to do when n == 0."""
    if n:
        blocks, threads = line(n)
        kernel[blocks, threads](*args)


def add(a, b, out):
    """out = a + b (same shape and dtype, C-contiguous)."""
    _launch(_add, out.size, flat(a), flat(b), flat(out))


def sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step on p in place; buf is the momentum buffer (unused without momentum)."""
    t = p.dtype.type
    _launch(_sgd, p.size, flat(p), flat(g), flat(buf), t(lr), t(momentum), t(dampening), t(weight_decay),
              bool(nesterov), bool(first))


def adam(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, amsgrad, step):
    """One Adam step on p in place, step counted from 1; vmax is used with amsgrad only."""
    t = p.dtype.type
    step_size = lr / (1 - beta1 ** step)
    root_correction2 = math.sqrt(1 - beta2 ** step)
    _launch(_adam, p.size, flat(p), flat(g), flat(m), flat(v), flat(vmax), t(lr), t(beta1), t(beta2),
              t(eps), t(weight_decay), bool(amsgrad), t(step_size), t(root_correction2))
