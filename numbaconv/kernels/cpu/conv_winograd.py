"""Winograd's minimal filtering F(4x4, 3x3) for 3x3 convolutions at unit stride (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 4x4 tile of outputs
from its 6x6 tile of inputs in 36 multiplies per channel pair where the direct sum takes 144.

    Y = A^T [ (G g G^T) . (B^T d B) ] A

summed over input channels, with the products of the 36 transformed positions e as 36
independent GEMMs: M[e] (tiles x K) = V[e] (tiles x C) @ U[e] (C x K). So a 3x3 layer of
ResNet-18 spends a quarter of im2col's multiply-adds in its GEMMs, for three passes im2col does
not make: transforming the input, the weight and the GEMMs' results.

The input is first copied channels-last into a zero-bordered (planes, rows, columns, C)
buffer (``_channels_last``); the transformed weight, tiles and GEMMs' products are
position-major, (36, C, K), (36, tiles, C) and (36, tiles, K), so each GEMM's matrices are
contiguous; the output transform puts each tile row's outputs in place
with the bias, the residual and the activation (``_output_tiles``). Every transform is a
sequence of loops that each write one row of a small matrix product over contiguous channels
(``_row3``, ``_row6``), so that LLVM vectorizes them. Like im2col's copies, they run between
GEMMs, and serial while NumPy's BLAS threads spin (``parallel_kernel(beside_blas=True)``: the
compiled ResNet-18 at batch 1 with NumPy imported first, 33-35 -> 29-32 ms). ``pays`` says
where this beats im2col.

The interpolation points 0, 1, -1, 2, -2 and infinity keep the transforms' entries at most 8 in
magnitude. The transforms mix a tile's inputs, so an output's rounding error follows the
magnitudes of its whole tile: in float32 about 1e-6 of the largest sum of absolute terms in the
tile (the tests allow 1e-4 of it, ``tests/conftest.tile_scale``), where the direct sum's
follows each output's own terms. For the same reason a NaN or an infinity would reach the whole
tile; ``forward`` leaves such calls to im2col.

Forward pass and input gradient (the correlation of grad_out with the flipped kernel, also a
3x3 convolution at unit stride, when the padding is at most 2); the weight gradient runs
im2col's.
"""

import numpy as np
from numba import njit, prange

from . import conv_im2col, gemm
from ._window import IDENTITY, U, activate, parallel_kernel, scratch_array
from .conv_direct import flipped
from .conv_im2col import _adjoint, _quiet

#: Outputs per tile side, inputs per tile side (TILE + 3 - 1) and transformed positions a tile.
TILE, ALPHA, POSITIONS = 4, 6, 36

#: The rule of ``pays``: at least ``MIN_CHANNELS`` channels in and out, at least
#: ``min_channel_pairs`` channels in x out, and at least ``MIN_TILES`` tiles of 4x4 outputs over
#: the batch, or ``large_weight_min_tiles`` from ``large_weight`` channel pairs on (the caller's
#: three, ``functional.conv.Rules``: AVX-512's direct loops leave Winograd less to win than
#: AVX2's). Each call transforms the weight (36 C K values: 37 MB at 512 x 512) and runs
#: 36 GEMMs of tiles x C by C x K: few tiles leave short GEMMs and the weight's transform
#: unpaid, and few channels make the input and output transforms, which read and write every
#: tile, cost more than the multiply-adds they save. What they are measured against is the
#: stride-1 direct loops, whose sums stay in registers (``conv_direct._correlate_stacked``).
#: Measured, ms, forward, Winograd / direct, bursts taking turns in one process, 2-core
#: AVX-512, (batch, channels in -> out, plane), tiles: taken, VGG-16's (1, 128 -> 128,
#: 112x112) 784 9.0 / 11.6, its (1, 256 -> 256, 56x56) 196 9.6 / 10.5, its (1, 64 -> 128,
#: 112x112) 784 6.3 / 6.4, ResNet-18's (8, 128 -> 128, 28x28) 392 5.1 / 6.1; left to the
#: loops, (8, 64 -> 64, 56x56) 1568 7.8 / 6.5 and (1, 64, 224x224) 3136 12.8 / 11.4 (64 x 64
#: channels), (8, 256 -> 256, 14x14) 128 6.9 / 7.5 (a tie: 6.6 / 6.5 in another run),
#: (8, 384 -> 256, 13x13) 128 9.2 / 8.7, (1, 512 -> 512, 28x28) 49 13.0 / 9.8, (1, 128 -> 128,
#: 28x28) 49 0.92 / 0.68, (1, 256 -> 256, 14x14) 16 2.6 / 0.9. With PyTorch imported first
#: (``numbaconv bench``'s setting), bursts after NumPy's BLAS threads settle: (8, 256 -> 256,
#: 14x14) 128 6.5 / 7.5, (8, 512 -> 512, 14x14) 128 23.2 / 28.9, and ties at 13x13 (AlexNet's
#: layers at batch 8, 128 tiles: 6.6 / 6.6, 9.7 / 9.4, 7.2 / 7.2).
MIN_CHANNELS = 64
MIN_TILES = 192


def applies(geom, direction="forward"):
    """Whether Winograd's tiles can run ``direction`` of this convolution: a 3x3 kernel (1x3x3
    in 3-D), unit stride and dilation, one group; the input gradient when its complementary
    padding is not negative (a padding of at most 2). Never the weight gradient."""
    if not (geom.kernel[1:] == (3, 3) and geom.kernel[0] == 1 and geom.stride == (1, 1, 1)
            and geom.dilation[1:] == (1, 1) and geom.groups == 1 and geom.padding[0] == 0):
        return False
    if direction == "forward":
        return True
    return direction == "grad_input" and _adjoint(geom) is not None


def pays(geom, min_channel_pairs, large_weight, large_weight_min_tiles):
    """The rule ``choose_algorithm`` asks (``MIN_CHANNELS``, ``MIN_TILES`` and the caller's
    thresholds, above); the same for the input gradient, whose tiles and channel counts are the
    forward pass's swapped."""
    th, tw = _tiles(geom)
    C, K = geom.in_channels, geom.out_channels
    tiles = geom.batch * geom.out_size[0] * th * tw
    return (min(C, K) >= MIN_CHANNELS and C * K >= min_channel_pairs
            and tiles >= (large_weight_min_tiles if C * K >= large_weight else MIN_TILES))


#: The transforms' matrices (Lavin and Gray's, for the points 0, 1, -1, 2, -2 and infinity):
#: V = B^T d B for a 6x6 tile d of inputs, U = G g G^T for a 3x3 kernel g, Y = A^T M A for the
#: 6x6 products M.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])

# Every transform below is a sequence of loops that each write one row of a matrix product: one
# store and at most six loads a pass, which LLVM vectorizes (a loop computing a whole tile's 36
# values, 36 loads and 36 stores, needed more run-time checks that its arrays do not overlap
# than LLVM makes, and ran as scalar code, 10x slower).


@njit(inline="always", cache=True)
def _row3(dst, d0, src, s0, step, coef, n):
    """dst[d0 + z] = sum over a < 3 of coef[a] * src[s0 + a * step + z], z < n (flat arrays)."""
    c0, c1, c2 = coef[0], coef[1], coef[2]
    for z in range(n):
        dst[U(d0 + z)] = c0 * src[U(s0 + z)] + c1 * src[U(s0 + step + z)] + c2 * src[U(s0 + 2 * step + z)]


@njit(inline="always", cache=True)
def _row6(dst, d0, src, s0, step, coef, n):
    """dst[d0 + z] = sum over a < 6 of coef[a] * src[s0 + a * step + z], z < n (flat arrays)."""
    c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
    for z in range(n):
        dst[U(d0 + z)] = (c0 * src[U(s0 + z)] + c1 * src[U(s0 + step + z)] + c2 * src[U(s0 + 2 * step + z)]
                          + c3 * src[U(s0 + 3 * step + z)] + c4 * src[U(s0 + 4 * step + z)]
                          + c5 * src[U(s0 + 5 * step + z)])


@parallel_kernel(beside_blas=True)
def _weights(wt, u, g, C, K):
    """u[6i + j, c, k] = (G w G^T)[i, j] of the kernel w of output channel k and input channel
    c, wt the (C, 9, K) taps (the output channels innermost) flat, u (36, C, K) flat; g the
    matrix G in u's dtype."""
    for c in prange(C):
        gw = np.empty(ALPHA * 3 * K, dtype=u.dtype)  # G w: 6 rows of 3 kernel columns
        for i in range(ALPHA):
            for j in range(3):
                _row3(gw, (i * 3 + j) * K, wt, (c * 9 + j) * K, 3 * K, g[i], K)
        for i in range(ALPHA):
            for j in range(ALPHA):
                _row3(u, ((i * ALPHA + j) * C + c) * K, gw, i * 3 * K, K, g[j], K)


@parallel_kernel(streaming=True, beside_blas=True)
def _channels_last(x, xcl, s0, pad_h, pad_w, nonfinite):
    """xcl[s, pad_h + r, pad_w + col, c] = x[n, c, d, r, col] for the planes s = n * D + d from
    s0 on; the rest of xcl (the border, and the rows and columns past the last tile's reach)
    zero. nonfinite[s * rows + row] = how many of the row's inputs are NaN or infinite (read
    as they are copied: see ``forward``)."""
    N, C, D, H, W = x.shape
    S, Hp, Wp = xcl.shape[:3]
    zero = xcl.dtype.type(0)
    for task in prange(S * Hp):
        s, row = task // Hp, task % Hp
        n, d = (s0 + s) // D, (s0 + s) % D
        r = row - pad_h
        nonfinite[task] = 0
        if r < 0 or r >= H:
            for col in range(Wp):
                for c in range(C):
                    xcl[s, row, col, c] = zero
            continue
        for col in range(pad_w):
            for c in range(C):
                xcl[s, row, col, c] = zero
        for col in range(pad_w + W, Wp):
            for c in range(C):
                xcl[s, row, col, c] = zero
        bad = 0
        for c in range(C):
            for col in range(W):
                v = x[n, c, d, r, col]
                xcl[s, row, pad_w + col, c] = v
                bad += v - v != 0  # NaN for NaN and for either infinity
        nonfinite[task] = bad


@parallel_kernel(beside_blas=True)
def _input_tiles(xf, v, tiles_h, tiles_w, rows_out, width, C, bt):
    """v[6a + b, t, c] = (B^T d B)[a, b] for each tile of 6x6 inputs d (tile row g = s * tiles_h
    + i: rows 4i.. of plane s; tile t = g * tiles_w + j, columns 4j..), xf the channels-last
    planes flat (planes, rows, width, C), v (36, tiles, C) flat. Per tile row: B^T down the columns of the six
    input rows (each output row one loop over the rows' width and channels), then B along each
    tile's columns (each of the 36 positions one loop over the tile's channels)."""
    L = width * C  # a row of the channels-last planes
    T = rows_out * tiles_w
    for row in prange(rows_out):
        s, i = row // tiles_h, row % tiles_h
        x0 = (s * (tiles_h * TILE + 2) + i * TILE) * L
        e = np.empty(ALPHA * L, dtype=v.dtype)
        for a in range(ALPHA):
            _row6(e, a * L, xf, x0, L, bt[a], L)
        for j in range(tiles_w):
            t = row * tiles_w + j
            for a in range(ALPHA):
                for b in range(ALPHA):
                    _row6(v, ((a * ALPHA + b) * T + t) * C, e, a * L + j * TILE * C, C, bt[b], C)


@parallel_kernel(beside_blas=True)
def _output_tiles(mf, out, g0, tiles_h, tiles_w, rows_out, K, at, b, residual, slope, lo, hi):
    """out[n, k, d, 4i + y, 4j + x] = activate((A^T M A)[y, x] + b[k] + residual[...]) of each
    tile's transformed products M[a, b] = m[6a + b, t, k] (tiles as in ``_input_tiles``, mf
    the (36, tiles, K) products flat; plane s = n * D + d; an empty residual adds nothing), the rows and columns past the
    plane's last output dropped. Per tile row: A^T down each tile's columns, then A along its
    rows into a channels-last row of outputs, then the outputs in place."""
    N, _, D, OH, OW = out.shape
    has_residual = residual.size > 0
    width = tiles_w * TILE
    T = rows_out * tiles_w
    for row in prange(rows_out):
        s, i = (g0 + row) // tiles_h, (g0 + row) % tiles_h
        n, d = s // D, s % D
        r = i * TILE
        col_sums = np.empty(TILE * ALPHA * K, dtype=out.dtype)  # A^T M of one tile: (4, 6, K)
        o = np.empty(TILE * width * K, dtype=out.dtype)  # the tile row's outputs: (4, width, K)
        for j in range(tiles_w):
            t = row * tiles_w + j
            for y in range(TILE):
                for q in range(ALPHA):
                    _row6(col_sums, (y * ALPHA + q) * K, mf, (q * T + t) * K, ALPHA * T * K, at[y], K)
            for y in range(TILE):
                for x in range(TILE):
                    _row6(o, (y * width + j * TILE + x) * K, col_sums, y * ALPHA * K, K, at[x], K)
        for k in range(K):
            bias = b[k]
            for y in range(min(TILE, OH - r)):
                if has_residual:
                    for col in range(OW):
                        out[n, k, d, r + y, col] = activate(o[U((y * width + col) * K + k)] + bias
                                                            + residual[n, k, d, r + y, col], slope, lo, hi)
                else:
                    for col in range(OW):
                        out[n, k, d, r + y, col] = activate(o[U((y * width + col) * K + k)] + bias, slope, lo, hi)


def _tiles(geom):
    """Tiles per plane: (rows, columns)."""
    return -(-geom.out_size[1] // TILE), -(-geom.out_size[2] // TILE)


def _per_plane(geom):
    """Scratch elements per plane: the channels-last input, its transformed tiles and the GEMMs'
    products."""
    th, tw = _tiles(geom)
    C, K = geom.in_channels, geom.out_channels
    return (TILE * th + 2) * (TILE * tw + 2) * C + POSITIONS * th * tw * (C + K)


def _planes_per_chunk(geom, itemsize, workspace):
    """Planes a chunk: as many as ``workspace`` holds, the batch's at most, one at least. A
    chunk's tiles go through one GEMM each of the 36 positions: fewer, longer GEMMs ran faster
    than passes of tiles sized to stay in cache, whose GEMMs were short ((8, 128, 28x28), calls
    alternating with other algorithms': 13.4 ms in passes of 2 MB, 9.3 ms whole)."""
    planes = geom.batch * geom.out_size[0]
    return int(max(1, min(planes, workspace // (_per_plane(geom) * itemsize))))


def workspace_bytes(geom, itemsize, workspace):
    """The most scratch one call holds (``numbaconv bench`` quotes peak memory against it): a
    chunk's buffers and the transformed weight."""
    per_chunk = _planes_per_chunk(geom, itemsize, workspace) * _per_plane(geom)
    return (per_chunk + POSITIONS * geom.in_channels * geom.out_channels) * itemsize


def _require(geom, direction):
    if not applies(geom, direction):
        raise ValueError(f"algorithm 'winograd' runs the forward pass and input gradient of 3x3 convolutions at "
                         f"stride 1, dilation 1, one group (input gradient: padding at most 2); got kernel "
                         f"{geom.kernel[3 - geom.ndim:]}, stride {geom.stride[3 - geom.ndim:]}, dilation "
                         f"{geom.dilation[3 - geom.ndim:]}, groups {geom.groups}, padding "
                         f"{geom.padding[3 - geom.ndim:]} for the {direction.replace('_', ' ')}")


@_quiet
def forward(x, w, b, out, geom, workspace, epilogue=IDENTITY, residual=None):
    """out = epilogue(conv(x, w) + b + residual), x (N, C, D, H, W) and w (K, C, 1, 3, 3).

    A NaN or an infinity in the input or the weight would reach every output of its tiles (the
    transforms mix a tile's inputs, and inf - inf is NaN), where the direct sum, and PyTorch,
    give it to the outputs whose windows cover it only. So the copy of the input checks every
    value it moves, and a call with any that is not finite runs im2col instead."""
    _require(geom, "forward")
    if not np.isfinite(w).all():
        return conv_im2col.forward(x, w, b, out, geom, workspace, epilogue, residual)
    dtype = out.dtype
    C, K = geom.in_channels, geom.out_channels
    th, tw = _tiles(geom)
    pad_h, pad_w = geom.padding[1:]
    bt, g, at = (m.astype(dtype) for m in (_BT, _G, _AT))
    # the transformed weight, 4x the weight's size, in a buffer kept per thread: a fresh one of
    # several MB cost a page fault per 4 KiB on every call
    u = scratch_array("winograd_weight", (POSITIONS, C, K), dtype)
    wt = w.reshape(K, C, 9).transpose(1, 2, 0)
    _weights(np.ascontiguousarray(wt).reshape(-1), u.reshape(-1), g, C, K)
    b = np.zeros(K, dtype=dtype) if b is None else b
    r = (np.empty((0,) * 5, dtype) if residual is None else np.ascontiguousarray(residual).reshape(out.shape))
    activation = tuple(dtype.type(v) for v in epilogue)
    planes = geom.batch * geom.out_size[0]
    size = _planes_per_chunk(geom, dtype.itemsize, workspace)
    nonfinite = np.empty(size * (TILE * th + 2), dtype=np.int64)
    for s0 in range(0, planes, size):
        S = min(size, planes - s0)
        xcl = scratch_array("padded", (S, TILE * th + 2, TILE * tw + 2, C), dtype)
        _channels_last(x, xcl, s0, pad_h, pad_w, nonfinite)
        if nonfinite[:S * (TILE * th + 2)].any():  # im2col then writes all of out again
            return conv_im2col.forward(x, w, b, out, geom, workspace, epilogue, residual)
        v = scratch_array("cols", (POSITIONS, S * th * tw, C), dtype)
        _input_tiles(xcl.reshape(-1), v.reshape(-1), th, tw, S * th, TILE * tw + 2, C, bt)
        # the 36 GEMMs on contiguous matrices, position-major: with the tiles major instead
        # (rows 36 C apart), (1, 64, 56x56)'s took 1.03 ms against 0.65
        m = scratch_array("result", (POSITIONS, S * th * tw, K), dtype)
        gemm.matmul(v, u, out=m)
        _output_tiles(m.reshape(-1), out, s0 * th, th, tw, S * th, K, at, b, r, *activation)


def grad_input(go, w, gx, geom, workspace):
    """The input gradient: the forward pass of the correlation of grad_out with the flipped
    kernel at the complementary padding (``conv_im2col._adjoint``)."""
    _require(geom, "grad_input")
    forward(go, flipped(w, geom), None, gx, _adjoint(geom), workspace)


def grad_weight(go, x, gw, geom, workspace):
    """im2col's: the weight gradient has no Winograd form here (its GEMM already sums over
    every output position)."""
    conv_im2col.grad_weight(go, x, gw, geom, workspace)
