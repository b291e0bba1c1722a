"""numbaconv.save / numbaconv.load: round trips in both formats, models (and a model exported
from PyTorch) through a file, every kind of bad file, and that loading never runs code."""

import os
import pathlib
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import numbaconv
from numbaconv import nn

FORMATS = ("npz", "safetensors")


def make_model(seed, dtype=np.float32):
    numbaconv.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, dtype=dtype), nn.BatchNorm2d(3, dtype=dtype), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 5, dtype=dtype))


def trained(model, rng):
    """``model`` after two training-mode forwards, so its running statistics are not the defaults."""
    model.train()
    for _ in range(2):
        model(rng.standard_normal((4, 2, 6, 6)).astype(model[0].weight.dtype))
    return model


def copies(state):
    return OrderedDict((k, v.copy()) for k, v in state.items())


def assert_same_state(got, ref):
    assert isinstance(got, OrderedDict)
    assert list(got) == list(ref)
    for key, value in ref.items():
        value = np.asarray(value)
        assert isinstance(got[key], np.ndarray) and type(got[key]) is np.ndarray, key
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_dtype_shape_values_and_order(tmp_path, rng, fmt):
    state = OrderedDict([
        ("z.weight", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
        ("a.bias", rng.standard_normal(5)),  # float64
        ("m.num_batches_tracked", np.array(7, dtype=np.int64)),  # 0-d, as BatchNorm's
        ("b.mask", np.array([True, False, True])),
        ("c.empty", np.zeros((0, 4), np.float32)),
        ("d.strided", rng.standard_normal((4, 6))[:, ::2]),  # not contiguous
        ("e.fortran", np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))),
        ("file", np.arange(3, dtype=np.int32)),  # np.savez's own argument names are fine keys
        ("allow_pickle", np.arange(2, dtype=np.uint8)),
    ])
    path = tmp_path / f"state.{fmt}"
    numbaconv.save(state, path)
    loaded = numbaconv.load(path)
    assert_same_state(loaded, state)
    assert loaded["m.num_batches_tracked"].shape == ()
    assert all(a.flags.writeable for a in loaded.values())
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_str_and_pathlike_and_overwrite(tmp_path, fmt):
    first, second = {"w": np.ones(3, np.float32)}, {"w": np.zeros(2, np.float64)}
    numbaconv.save(first, str(tmp_path / f"m.{fmt}"))
    numbaconv.save(second, tmp_path / f"m.{fmt}")  # replaces the file
    assert_same_state(numbaconv.load(str(tmp_path / f"m.{fmt}")), second)
    assert os.listdir(tmp_path) == [f"m.{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_round_trip(tmp_path, rng, fmt, dtype):
    model = trained(make_model(0, dtype), rng)
    assert int(model[1].num_batches_tracked) == 2
    path = tmp_path / f"model.{fmt}"
    numbaconv.save(model, path)
    fresh = make_model(1, dtype)  # a different seed: different weights until loaded
    x = rng.standard_normal((3, 2, 6, 6)).astype(dtype)
    assert not np.array_equal(fresh.eval()(x), model.eval()(x))
    result = fresh.load_state_dict(numbaconv.load(path))
    assert result == ([], [])
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert fresh[1].num_batches_tracked.shape == () and int(fresh[1].num_batches_tracked) == 2
    np.testing.assert_array_equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_exported_from_torch_gives_torch_outputs(tmp_path, rng, fmt):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    ref.train()
    with torch.no_grad():
        for _ in range(2):
            ref(torch.tensor(rng.standard_normal((4, 2, 6, 6)).astype(np.float32)))
    path = tmp_path / f"torch.{fmt}"
    if fmt == "npz":
        np.savez(path, **{name: t.numpy() for name, t in ref.state_dict().items()})
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(ref.state_dict(), str(path))
    state = numbaconv.load(path)
    if fmt == "npz":
        assert list(state) == list(ref.state_dict())
    model = make_model(1)
    model.load_state_dict(state)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        expected = ref.eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(model.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    numbaconv.save({"w": np.ones(3)}, path)
    before = path.read_bytes()

    def crash(arrays, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(numbaconv.io, "_write_npz", crash)
    with pytest.raises(OSError, match="disk full"):
        numbaconv.save({"w": np.zeros(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


# --------------------------------------------------------------------------- what save refuses


@pytest.mark.parametrize("state, error, match", [
    ({"w": np.array([1, "x", None], dtype=object)}, TypeError, r"w must hold numbers.*object.*pickle"),
    ({"w": np.array(["a", "b"])}, TypeError, "w must hold numbers"),
    ({"w": np.zeros(2, dtype=[("a", "f4")])}, TypeError, "w must hold numbers"),
    ({"w": np.zeros(2, np.complex64)}, TypeError, "w must hold numbers"),
    ({"w": [1.0, 2.0]}, TypeError, "w must be a numpy array"),
    ({1: np.zeros(2)}, TypeError, "keys must be str"),
    ({"": np.zeros(2)}, ValueError, "non-empty"),
    ({}, ValueError, "empty"),
    ([("w", np.zeros(2))], TypeError, "Module or a mapping"),
])
@pytest.mark.parametrize("fmt", FORMATS)
def test_save_refuses(tmp_path, state, error, match, fmt):
    with pytest.raises(error, match=match):
        numbaconv.save(state, tmp_path / f"m.{fmt}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("op", ["save", "load"])
def test_unsupported_suffix(tmp_path, op):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    call = (lambda: numbaconv.save({"w": np.zeros(2)}, path)) if op == "save" else (lambda: numbaconv.load(path))
    with pytest.raises(ValueError, match=r"'\.pt'.*\.npz, \.safetensors"):
        call()
    with pytest.raises(TypeError, match="str or os.PathLike"):
        numbaconv.save({"w": np.zeros(2)}, 3) if op == "save" else numbaconv.load(b"m.npz")


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        numbaconv.save({"w": np.zeros(2)}, tmp_path / "nope" / "m.npz")


def test_safetensors_without_the_package(tmp_path, monkeypatch):
    numbaconv.save({"w": np.zeros(2)}, tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install numbaconv\[safetensors\]"):
        numbaconv.save({"w": np.zeros(2)}, tmp_path / "n.safetensors")
    with pytest.raises(ImportError, match=r"pip install numbaconv\[safetensors\]"):
        numbaconv.load(tmp_path / "m.safetensors")
    assert_same_state(numbaconv.load(_npz(tmp_path)), {"w": np.zeros(2)})  # .npz needs nothing


def _npz(tmp_path):
    numbaconv.save({"w": np.zeros(2)}, tmp_path / "plain.npz")
    return tmp_path / "plain.npz"


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    for fmt in FORMATS:
        with pytest.raises(FileNotFoundError, match=f"nope.{fmt}"):
            numbaconv.load(tmp_path / f"nope.{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(tmp_path, rng, fmt):
    path = tmp_path / f"m.{fmt}"
    numbaconv.save(trained(make_model(0), rng), path)
    data = path.read_bytes()
    for cut in (0, 3, 8, 20, 100, len(data) // 2, len(data) - 30, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"m\.{fmt}' is truncated or not a \.npz/\.safetensors file"):
            numbaconv.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_data_in_a_complete_file(tmp_path, fmt):
    path = tmp_path / f"m.{fmt}"
    numbaconv.save({"w": np.arange(64, dtype=np.float64)}, path)
    data = bytearray(path.read_bytes())
    if fmt == "npz":  # a flipped byte in the array's data: the zip's CRC check catches it
        data[-200] ^= 0xFF
        match = "truncated or not a .npz/.safetensors file .Bad CRC-32"
    else:  # a header that is not JSON
        data[9] = ord("~")
        match = "truncated or not a .npz/.safetensors file .the header is not JSON"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=match):
        numbaconv.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", [b"", b"just some text\n", bytes(range(256)) * 4, os.urandom(1000)])
def test_not_a_model_file(tmp_path, fmt, content):
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"m\.{fmt}' is truncated or not a \.npz/\.safetensors file"):
        numbaconv.load(path)


def test_npy_renamed(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros(3))
    os.replace(tmp_path / "w.npy", tmp_path / "w.npz")
    with pytest.raises(ValueError, match=r"w\.npz' holds a single \.npy array"):
        numbaconv.load(tmp_path / "w.npz")


@pytest.mark.parametrize("fmt", FORMATS)
def test_suffix_and_content_disagree(tmp_path, fmt):
    other = "safetensors" if fmt == "npz" else "npz"
    numbaconv.save({"w": np.zeros(2)}, tmp_path / f"m.{other}")
    os.replace(tmp_path / f"m.{other}", tmp_path / f"m.{fmt}")
    with pytest.raises(ValueError, match=rf"m\.{fmt}' is named \.{fmt} but holds a \.{other} file"):
        numbaconv.load(tmp_path / f"m.{fmt}")


def test_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, weight=np.ones(2, np.float32), names=np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match=r"m\.npz'.*names is an object array.*refused"):
        numbaconv.load(path)


def test_npz_with_strings_or_other_members_is_not_a_model(tmp_path):
    np.savez(tmp_path / "s.npz", w=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"s\.npz'.*w holds dtype <U1, not numbers"):
        numbaconv.load(tmp_path / "s.npz")
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as zf:  # a zip, but not of .npy arrays
        zf.writestr("data.pkl", b"\x80\x04N.")
    with pytest.raises(ValueError, match=r"z\.npz'.*'data\.pkl' is not a \.npy array"):
        numbaconv.load(tmp_path / "z.npz")


def test_empty_archive(tmp_path):
    np.savez(tmp_path / "e.npz")
    with pytest.raises(ValueError, match=r"e\.npz' holds no arrays"):
        numbaconv.load(tmp_path / "e.npz")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file({}, str(tmp_path / "e.safetensors"))
    with pytest.raises(ValueError, match=r"e\.safetensors' holds no arrays"):
        numbaconv.load(tmp_path / "e.safetensors")


class _TouchOnUnpickle:
    """Unpickling this creates the file at ``marker``: the code a pickle-bearing file could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_malicious_pickle_never_runs(tmp_path):
    def evil_npz(name, marker):
        np.savez(tmp_path / name, weight=np.ones(2, np.float32),
                 payload=np.array([_TouchOnUnpickle(str(marker))], dtype=object))
        return tmp_path / name

    # the control: unpickling this archive does run code
    control = tmp_path / "control-marker"
    np.load(evil_npz("control.npz", control), allow_pickle=True)["payload"]
    assert control.exists()

    marker = tmp_path / "marker"
    with pytest.raises(ValueError, match="payload is an object array"):
        numbaconv.load(evil_npz("evil.npz", marker))
    assert not marker.exists()


# --------------------------------------------------------------------------- into a model


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatched_state_is_refused_and_model_unchanged(tmp_path, rng, fmt):
    model = trained(make_model(0), rng)
    numbaconv.manual_seed(1)
    other = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 7))
    numbaconv.save(other, tmp_path / f"shape.{fmt}")
    state = copies(model.state_dict())
    missing = copies(state)
    del missing["1.running_var"]
    numbaconv.save(missing, tmp_path / f"missing.{fmt}")
    extra = copies(state)
    extra["5.weight"] = np.zeros(3, np.float32)
    numbaconv.save(extra, tmp_path / f"extra.{fmt}")

    cases = [("shape", ValueError, r"4\.weight must have shape \(5, 48\), got \(7, 48\)"),
             ("missing", KeyError, r"missing keys \['1\.running_var'\]"),
             ("extra", KeyError, r"unexpected keys \['5\.weight'\]")]
    for name, error, match in cases:
        with pytest.raises(error, match=match):
            model.load_state_dict(numbaconv.load(tmp_path / f"{name}.{fmt}"))
        assert_same_state(model.state_dict(), state)
