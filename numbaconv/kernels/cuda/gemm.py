"""Tiled shared-memory GEMM with register blocking, batched, for the im2col convolution and
linear: no cuBLAS or CuPy needed.

``c[z] (+)= sum over r < reduce of op(a[(r*Z + z) % A]) @ op(b[(r*Z + z) % B])`` for every
matrix z < Z of a (Z, M, N) ``c``, where op transposes when asked and A, B are the batch
counts of ``a`` and ``b``. The modular batch index covers the convolutions' cases with no
copies: a (G, ...) weight shared by every sample of an (N*G, ...) batch (A = G divides Z), and a
weight gradient summed over the samples (Z = G, reduce = N).

A block computes a BM x BN tile of one c[z]: it stages BK-deep slices of the two operands in
shared memory, and each of its threads accumulates a TM x TN sub-tile in registers, so every
value read from shared memory feeds TM (or TN) multiply-adds. A thread's rows and columns are
interleaved (TY and TX apart) rather than adjacent, so a warp reads consecutive shared-memory
words (no bank conflicts) and writes consecutive columns of c (coalesced). Edges are handled by
reading zeros past the matrix and writing only inside it: any M, N, K work.
"""

import functools
from collections import namedtuple

from numba import cuda

from . import _launch
from ._launch import as_device, ceil_div, empty, numba_type, sum_rows

Tile = namedtuple("Tile", "BM BN BK TM TN")

#: Tiles from large to small, run by 256 threads (the last by 64). Large tiles reuse each loaded
#: value more (TM, TN multiply-adds per shared-memory read); small ones give a small problem
#: enough blocks, and a tiny one (a few channels, a few positions) no idle threads.
TILES = (Tile(128, 128, 8, 8, 8), Tile(64, 64, 8, 4, 4), Tile(32, 32, 8, 2, 2), Tile(16, 16, 8, 2, 2))

#: The largest tile is taken whose grid has at least this many blocks (a few per SM of a large
#: GPU), among the tiles less than twice the matrix in each direction (a larger one computes
#: mostly padding).
MIN_BLOCKS = 256


#: Split-K: a grid of fewer than MIN_BLOCKS blocks (a weight gradient's few large matrices, a
#: batch-1 layer with few output positions) splits its sum over rounds and k-tiles into slices
#: run by more blocks, each slice at least this many BK-deep steps; a second kernel adds the
#: slices' matrices.
MIN_SLICE_STEPS = 8


def choose_tile(batch, M, N):
    fitting = [t for t in TILES if t.BM < 2 * M and t.BN < 2 * N] or [TILES[-1]]
    for tile in fitting:
        if batch * ceil_div(M, tile.BM) * ceil_div(N, tile.BN) >= MIN_BLOCKS:
            return tile
    return fitting[-1]


@functools.cache
def _kernel(dtype, trans_a, trans_b, tile):
    nb = numba_type(dtype)
    BM, BN, BK, TM, TN = tile
    TX, TY = BN // TN, BM // TM
    THREADS = TX * TY

    @cuda.jit
    def gemm(a, b, c, reduce, accumulate, col_blocks, span):
        As = cuda.shared.array((BK, BM), nb)
        Bs = cuda.shared.array((BK, BN), nb)
        acc = cuda.local.array((TM, TN), nb)
        ar = cuda.local.array(TM, nb)
        br = cuda.local.array(TN, nb)
        M, N = c.shape[1], c.shape[2]
        K = a.shape[1] if trans_a else a.shape[2]
        ktiles = (K + BK - 1) // BK
        # grid z: the slice of the (round, k-tile) steps this block sums; c holds a matrix per
        # (slice, z), the slices added up afterwards (split-K)
        Z = c.shape[0] // cuda.gridDim.z
        z, col_block = cuda.blockIdx.x // col_blocks, cuda.blockIdx.x % col_blocks
        first = cuda.blockIdx.z * span
        last = min(reduce * ktiles, first + span)
        # grid y: row blocks, strided when there are more than a grid can have (65,535)
        for row_block in range(cuda.blockIdx.y, (M + BM - 1) // BM, cuda.gridDim.y):
            m0, n0 = row_block * BM, col_block * BN
            tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
            tid = ty * TX + tx
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = 0
            for step in range(first, last):
                r, k0 = step // ktiles, (step % ktiles) * BK
                za, zb = (r * Z + z) % a.shape[0], (r * Z + z) % b.shape[0]
                # stage the slices; consecutive threads read consecutive addresses of a and b
                for e in range(tid, BK * BM, THREADS):
                    if trans_a:  # a[za] is (K, M)
                        kk, mm = e // BM, e % BM
                    else:  # a[za] is (M, K)
                        mm, kk = e // BK, e % BK
                    v = nb(0)
                    if k0 + kk < K and m0 + mm < M:
                        v = a[za, k0 + kk, m0 + mm] if trans_a else a[za, m0 + mm, k0 + kk]
                    As[kk, mm] = v
                for e in range(tid, BK * BN, THREADS):
                    if trans_b:  # b[zb] is (N, K)
                        nn, kk = e // BK, e % BK
                    else:  # b[zb] is (K, N)
                        kk, nn = e // BN, e % BN
                    v = nb(0)
                    if k0 + kk < K and n0 + nn < N:
                        v = b[zb, n0 + nn, k0 + kk] if trans_b else b[zb, k0 + kk, n0 + nn]
                    Bs[kk, nn] = v
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[kk, ty + i * TY]
                    for j in range(TN):
                        br[j] = Bs[kk, tx + j * TX]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += ar[i] * br[j]
                cuda.syncthreads()
            for i in range(TM):
                row = m0 + ty + i * TY
                for j in range(TN):
                    col = n0 + tx + j * TX
                    if row < M and col < N:
                        zc = cuda.blockIdx.z * Z + z
                        if accumulate:
                            c[zc, row, col] += acc[i, j]
                        else:
                            c[zc, row, col] = acc[i, j]

    return gemm


def _as3(a):
    a = as_device(a)
    return a.reshape(1, *a.shape) if len(a.shape) == 2 else a


def gemm(a, b, c, trans_a=False, trans_b=False, reduce=1, accumulate=False, tile=None, split=None):
    """c[z] = (or += with ``accumulate``) sum over r < reduce of op(a[(r*Z + z) % A]) @
    op(b[(r*Z + z) % B]), for C-contiguous device arrays of one dtype: a (A, M, K), or (A, K, M)
    with ``trans_a``; b (B, K, N), or (B, N, K) with ``trans_b``; c (Z, M, N). 2-D operands are
    one matrix. ``tile`` (one of TILES) overrides the choice from the problem size, ``split``
    the number of split-K slices."""
    a, b, c = _as3(a), _as3(b), _as3(c)
    Z, M, N = c.shape
    if Z * M * N == 0:
        return
    tile = tile or choose_tile(Z, M, N)
    col_blocks = ceil_div(N, tile.BN)
    blocks = Z * col_blocks * ceil_div(M, tile.BM)
    steps = int(reduce) * ceil_div(a.shape[1] if trans_a else a.shape[2], tile.BK)
    slices = split or max(1, min(ceil_div(MIN_BLOCKS, blocks), steps // MIN_SLICE_STEPS))
    span = ceil_div(steps, slices)
    slices = ceil_div(steps, span)  # none empty
    out = c if slices == 1 else empty((slices * Z, M, N), c.dtype)
    # the batch shares grid x with the column blocks: grid y and z are limited to 65535 (the
    # kernel strides over row blocks past that; slices never come near it)
    grid = (Z * col_blocks, min(ceil_div(M, tile.BM), _launch.MAX_GRID_Y), slices)
    block = (tile.BN // tile.TN, tile.BM // tile.TM)
    _kernel(c.dtype, bool(trans_a), bool(trans_b), tile)[grid, block](
        a, b, out, int(reduce), bool(accumulate) and slices == 1, col_blocks, span)
    if slices > 1:
        sum_rows(out.reshape(slices, Z * M * N), c, accumulate)
