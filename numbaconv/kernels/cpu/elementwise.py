"""Element-wise kernels: activations forward and backward, and dropout's masked scaling.

Arrays are flat (1-D) and C-contiguous; the caller passes ``a.reshape(-1)`` views of its
C-contiguous arrays. Each family is one kernel selected by an integer op code (``RELU``, ...):
the branch on the code sits outside the inner loop, so every inner loop is branch-free and
vectorizes where its arithmetic can. One kernel with a code rather than one kernel per op,
because Numba cannot cache a kernel that takes the scalar function as an argument or as a
closure variable (measured: a cache miss, and a fresh compile, in every new process), and
copies of one loop for every op would say the same thing five times.

``a`` is the op's scalar parameter (leaky_relu's negative_slope, elu's alpha; ignored by the
others), passed with the arrays' dtype so float32 arithmetic stays float32. Constants are made
with ``out.dtype.type`` for the same reason: a Python literal would promote float32 to float64.

The backwards of relu, leaky_relu, sigmoid and tanh are written once, as ``_grad``, for one
element or for a SIMD vector (``_simd``'s operators): a large output (``_simd.STREAM_MIN_BYTES``) is
written whole vectors at a time past the caches, the few elements before its first aligned
vector and after its last one at a time, the same formula either way (bit for bit).

NaN and inf behave as in PyTorch: comparisons are written so that a NaN input goes to the
branch PyTorch sends it to (relu(NaN) is NaN; relu's gradient at a NaN input passes grad_out).
"""


from numba import njit, prange

from ._math import exp, expm1, tanh
from ._simd import lanes, store_fence, stream_start, vload, vstream, where
from ._window import U, parallel_kernel

RELU, LEAKY_RELU, ELU, SIGMOID, TANH = range(5)

#: Elements per parallel task: large enough to amortize scheduling, small enough for 2-64 cores.
BLOCK = 1 << 14

@njit(inline="always", cache=True)
def _block(b, n):
    lo = b * BLOCK
    return lo, min(n, lo + BLOCK)


@parallel_kernel(streaming=True)
def forward(op, x, a, out):
    """out = op(x); x may be the forward's input only (every op here is a function of x)."""
    n = x.size
    zero, one = out.dtype.type(0), out.dtype.type(1)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = _block(b, n)
        if op == RELU:
            for i in range(lo, hi):
                v = x[U(i)]
                out[U(i)] = zero if v < zero else v  # NaN stays NaN and -0 stays -0, as torch.relu
        elif op == LEAKY_RELU:
            for i in range(lo, hi):
                v = x[U(i)]
                out[U(i)] = v if v > zero else v * a
        elif op == ELU:
            for i in range(lo, hi):
                v = x[U(i)]
                out[U(i)] = v if v > zero else a * expm1(v)
        elif op == SIGMOID:
            for i in range(lo, hi):
                out[U(i)] = one / (one + exp(-x[U(i)]))
        else:  # TANH
            for i in range(lo, hi):
                out[U(i)] = tanh(x[U(i)])


@njit(inline="always", cache=True)
def _grad(op, g, t, a, zero, one):
    """grad_out * op'(...) for relu, leaky_relu, sigmoid and tanh (``backward``), for one element
    or a vector of them (``_simd``'s operators)."""
    if op == RELU:  # torch's threshold_backward: 0 where x <= 0 (even for a NaN grad_out)
        return where(t <= zero, zero, g)
    if op == LEAKY_RELU:
        return where(t > zero, g, g * a)
    if op == SIGMOID:
        return g * (one - t) * t
    return g * (one - t * t)  # TANH


@njit(inline="always", cache=True)
def _grad_block(op, go, t, a, out, lo, hi, start):
    """out[lo:hi] = ``_grad``; from ``start`` on (the first index aligned for ``vstream``, -1
    for none), whole vectors past the caches."""
    zero, one = out.dtype.type(0), out.dtype.type(1)
    if start < 0:
        for i in range(lo, hi):
            out[U(i)] = _grad(op, go[U(i)], t[U(i)], a, zero, one)
        return
    V = lanes(out)
    i = lo
    while i < hi and (i - start) % V != 0:
        out[U(i)] = _grad(op, go[U(i)], t[U(i)], a, zero, one)
        i += 1
    while i + V <= hi:
        vstream(out, i, _grad(op, vload(go, i), vload(t, i), a, zero, one))
        i += V
    while i < hi:
        out[U(i)] = _grad(op, go[U(i)], t[U(i)], a, zero, one)
        i += 1
    store_fence()


@parallel_kernel(streaming=True)
def backward(op, go, t, a, out):
    """out = grad_out * op'(...): ``t`` is the forward's input x for relu, leaky_relu and elu,
    its output y for sigmoid and tanh (whose derivatives are functions of y, as in PyTorch).
    Each op's loops are their own (the op a constant in them), so that they vectorize."""
    n = go.size
    start = stream_start(out)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = _block(b, n)
        if op == RELU:
            _grad_block(RELU, go, t, a, out, lo, hi, start)
        elif op == LEAKY_RELU:
            _grad_block(LEAKY_RELU, go, t, a, out, lo, hi, start)
        elif op == SIGMOID:
            _grad_block(SIGMOID, go, t, a, out, lo, hi, start)
        elif op == TANH:
            _grad_block(TANH, go, t, a, out, lo, hi, start)
        else:  # ELU: d/dx alpha * (exp(x) - 1) = alpha * exp(x), for x <= 0 as in torch
            zero = out.dtype.type(0)
            for i in range(lo, hi):
                v, g = t[U(i)], go[U(i)]
                e = exp(v)  # computed for every element (inf for large v, unused): no branch
                out[U(i)] = g * a * e if v <= zero else g


@parallel_kernel(streaming=True)
def masked_scale(a, mask, scale, out):
    """out = a * scale where mask, a * 0 elsewhere (so NaN and inf propagate, as in PyTorch).

    Dropout's forward (a = x) and backward (a = grad_out) are both this one operation.
    """
    n = a.size
    zero = out.dtype.type(0)
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = _block(b, n)
        for i in range(lo, hi):
            out[U(i)] = a[U(i)] * (scale if mask[U(i)] else zero)
