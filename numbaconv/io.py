"""Saving and loading models' state: ``save(model_or_state_dict, path)`` and ``load(path)``.

Two formats, chosen by the file's suffix: ``.npz`` (NumPy's uncompressed archive of ``.npy``
arrays, what ``np.savez`` writes) and ``.safetensors`` (needs the ``safetensors`` package:
``pip install numbaconv[safetensors]``). Neither can hold code: ``.npz`` files are read with
``allow_pickle=False``, so an archive holding a pickled object array is refused without being
unpickled, and ``.safetensors`` is a JSON header followed by raw numbers.

    numbaconv.save(model, "model.npz")
    model.load_state_dict(numbaconv.load("model.npz"))

``save`` writes to a temporary file in the target's directory and renames it over the target
only once it is complete, so a crash never leaves half a file. ``load`` returns an OrderedDict
of name to array in the order they were saved, with every array read into memory and the file
closed. A state dict exported from PyTorch as ``{name: tensor.numpy()}`` and saved with
``np.savez`` (or with ``safetensors``) loads the same way.
"""

import json
import os
import secrets
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ._device import is_device_array, to_host

from .nn.module import Module

__all__ = ["save", "load"]

SUFFIXES = (".npz", ".safetensors")
_INSTALL = "pip install numbaconv[safetensors]"
_NUMERIC = "biuf"  # bool, signed and unsigned integers, floats: what load_state_dict takes
_ORDER_KEY = "numbaconv.order"  # safetensors metadata: the names in state-dict order
# The safetensors dtypes that NumPy can hold, and the item sizes per dtype kind it can write.
_ST_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"}
_ST_SIZES = {"b": (1,), "u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8)}
_ST_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _path(op, path):
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return path


def _format(op, path):
    suffix = os.path.splitext(path)[1]
    if suffix.lower() not in SUFFIXES:
        raise ValueError(f"{op}: unsupported file suffix {suffix or '(none)'!r} in {path!r}; "
                         f"use one of {', '.join(SUFFIXES)}")
    return suffix.lower()[1:]


def _safetensors(op):
    try:
        import safetensors  # noqa: F401
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise ImportError(f"{op}: .safetensors files need the safetensors package: {_INSTALL}") from None
    return safetensors


# --------------------------------------------------------------------------- save


def _state_of(model_or_state_dict, fmt):
    """The arrays to write, checked: str keys, numeric arrays (C-contiguous, little-endian)."""
    if isinstance(model_or_state_dict, Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = model_or_state_dict
    else:
        raise TypeError("save: expected a numbaconv.nn.Module or a mapping of names to arrays, "
                        f"got {type(model_or_state_dict).__name__}")
    if not state:
        raise ValueError("save: the state dict is empty; there is nothing to save")
    arrays = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"save: keys must be str, got {key!r} ({type(key).__name__})")
        if not key:
            raise ValueError("save: keys must be non-empty strings, got ''")
        if is_device_array(value):  # a model on the GPU: the file holds host copies
            value = to_host(value)
        if not isinstance(value, np.ndarray):
            if not hasattr(value, "__array__"):
                raise TypeError(f"save: {key} must be a numpy array, got {type(value).__name__}")
            value = np.asarray(value)
        if value.dtype.kind not in _NUMERIC:
            raise TypeError(f"save: {key} must hold numbers (bool, integers or floats), got dtype {value.dtype}"
                            + ("; object arrays would need pickle, which a safe file cannot hold"
                               if value.dtype.kind == "O" else ""))
        if fmt == "safetensors" and value.dtype.itemsize not in _ST_SIZES[value.dtype.kind]:
            raise TypeError(f"save: {key} has dtype {value.dtype}, which .safetensors cannot hold; use .npz")
        if fmt == "safetensors":
            value = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")  # keeps 0-d
        arrays[key] = value
    return arrays


def _write_npz(arrays, f):
    # What np.savez writes (stored, not compressed, members "<name>.npy"), with
    # allow_pickle=False; written directly because np.savez would take a key named "file" or
    # "allow_pickle" for its own argument.
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _write_safetensors(arrays, tmp):
    safetensors = _safetensors("save")
    metadata = {"format": "np", _ORDER_KEY: json.dumps(list(arrays))}
    safetensors.numpy.save_file(dict(arrays), tmp, metadata=metadata)


def save(model_or_state_dict, path):
    """Write a model's ``state_dict()`` (or a mapping of str to numeric array) to ``path``.

    The suffix picks the format: ``.npz`` or ``.safetensors``. The file is written to a
    temporary file beside ``path`` and renamed over it once complete (an existing file is
    replaced). Raises TypeError for non-str keys and for arrays that do not hold numbers
    (object, string and structured arrays), ValueError for other suffixes and an empty state.
    """
    path = _path("save", path)
    fmt = _format("save", path)
    if fmt == "safetensors":
        _safetensors("save")
    arrays = _state_of(model_or_state_dict, fmt)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: the directory of {path!r} does not exist")
    while True:  # a new name, opened exclusively; the mode follows the umask as open() does
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        mode = os.fstat(fd).st_mode & 0o7777
        with os.fdopen(fd, "wb") as f:
            if fmt == "npz":
                _write_npz(arrays, f)
        if fmt == "safetensors":
            _write_safetensors(arrays, tmp)
            os.chmod(tmp, mode)  # the library writes the file as owner-only
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; directories cannot be opened on Windows)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- load


def _bad(path, detail=None):
    more = f" ({detail})" if detail else ""
    return ValueError(f"load: {path!r} is truncated or not a .npz/.safetensors file{more}")


def _sniff(head, size):
    """What the first bytes say the file is: "npz", "npy", "safetensors" or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first member, or an empty zip
        return "npz"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n <= _ST_MAX_HEADER:
            return "safetensors"
    return None


def _check_array(path, key, value):
    if not isinstance(value, np.ndarray):
        raise ValueError(f"load: {path!r}: the member {key!r} is not a .npy array; this is not a saved state dict")
    if value.dtype.kind not in _NUMERIC:
        raise ValueError(f"load: {path!r}: {key} holds dtype {value.dtype}, not numbers; "
                         "this is not a saved state dict")
    return value


def _load_npz(path, f):
    state = OrderedDict()
    try:
        with np.load(f, allow_pickle=False) as npz:
            if len(set(npz.files)) != len(npz.files):
                raise ValueError(f"load: {path!r} holds two arrays of the same name")
            for key in npz.files:
                try:
                    value = npz[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):  # an object array: refused, never unpickled
                        raise ValueError(f"load: {path!r}: {key} is an object array, which would need "
                                         "unpickling (running code) to read; refused") from None
                    raise _bad(path, f"{key}: {e}") from None
                state[key] = _check_array(path, key, value)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise _bad(path, e) from None
    return state


def _load_safetensors(path, f, size):
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise _bad(path, f"the header says {n} bytes, the file has {size - 8} after the length")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for key, info in header.items():
        try:
            dtype, (begin, stop) = info["dtype"], info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise _bad(path, f"bad header entry for {key!r}: {e!r}") from None
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise ValueError(f"load: {path!r}: {key} has dtype {dtype}, which NumPy cannot hold")
        end = max(end, stop) if isinstance(stop, int) else end
    if 8 + n + end > size:
        raise _bad(path, f"the data ends at byte {8 + n + end} but the file has {size}")
    names = list(header)  # the header's order is the file's
    order = metadata.get(_ORDER_KEY) if isinstance(metadata, dict) else None
    if order is not None:
        try:
            order = json.loads(order)
        except (TypeError, ValueError):
            order = None
        if (isinstance(order, list) and all(isinstance(k, str) for k in order)
                and len(order) == len(names) and set(order) == set(names)):
            names = order  # the order the arrays were saved in
    safetensors = _safetensors("load")
    state = OrderedDict()
    try:
        with safetensors.safe_open(path, framework="np") as st:
            for key in names:
                state[key] = _check_array(path, key, st.get_tensor(key))
    except ValueError:
        raise
    except Exception as e:  # the parser's SafetensorError and the like: a malformed file
        raise _bad(path, e) from None
    return state


def load(path):
    """Read a file written by ``save`` (or by ``np.savez`` / ``safetensors``): an OrderedDict of
    name to array, in file order, for ``model.load_state_dict(numbaconv.load(path))``.

    Loading never runs code from the file. Raises FileNotFoundError for a missing file and
    ValueError, naming the file, for one that is truncated or corrupt, holds something else
    than named numeric arrays (a single ``.npy`` array, object arrays), holds no arrays, or
    whose content does not match its suffix.
    """
    path = _path("load", path)
    fmt = _format("load", path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        found = _sniff(head, size)
        if found == "npy":
            raise ValueError(f"load: {path!r} holds a single .npy array, not an archive of named arrays "
                             "(save a state dict with numbaconv.save or np.savez)")
        if found is None:
            raise _bad(path, "empty file" if size == 0 else "unrecognized content")
        if found != fmt:
            raise ValueError(f"load: {path!r} is named .{fmt} but holds a .{found} file; rename it to .{found}")
        f.seek(0)
        state = _load_npz(path, f) if fmt == "npz" else _load_safetensors(path, f, size)
    if not state:
        raise ValueError(f"load: {path!r} holds no arrays")
    return state
