"""Every tunable of numbaconv, in one place.

Values are read at call time, so assigning to them (``numbaconv.config.WORKSPACE_BYTES = 64 << 20``)
takes effect on the next call.
"""

#: Upper bound, in bytes, of the im2col column buffer. The batch is processed in chunks small
#: enough to keep the buffer under this limit (one sample at a time at the very least). The
#: buffer is kept for reuse by later calls, one per calling thread.
WORKSPACE_BYTES = 256 * 2**20
