"""fit, evaluate and predict: learning, reproducibility, the history, modes, batching, the
progress bar, and bad input."""

import sys

import numpy as np
import pytest

import numbaconv
from conftest import unmodified
from numbaconv import nn, optim
from numbaconv.optim import SGD, Adam

CLASSES = 3


def blobs(n=96, features=4, seed=0, dtype=np.float32):
    """A learnable classification problem: the class is the argmax of a fixed linear map."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(dtype)
    y = np.argmax(X @ rng.standard_normal((features, CLASSES)), axis=1)
    return X, y


def mlp(seed=0, dropout=0.0, dtype=np.float32):
    numbaconv.manual_seed(seed)
    layers = [nn.Linear(4, 16, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(16, CLASSES, dtype=dtype))


class ModeRecorder(nn.Module):
    """The identity, noting the mode of every forward call."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x

    def backward(self, grad_out, input_grad=True):
        return grad_out if input_grad else None


# --------------------------------------------------------------------------- learning


def test_fit_learns_a_classifier():
    X, y = blobs()
    model = mlp()
    history = numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1, momentum=0.9),
                            X, y, epochs=8, batch_size=16, seed=0, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.85


def test_fit_learns_a_regression_with_a_conv_net():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((48, 1, 6, 6)).astype(np.float32)
    y = X.mean(axis=(1, 2, 3))[:, None].astype(np.float32) * 3
    numbaconv.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    history = numbaconv.fit(model, nn.MSELoss(), Adam(model.parameters(), lr=0.01), X, y,
                            epochs=10, batch_size=8, seed=1, progress=False)
    assert list(history) == ["loss", "time"]
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_fit_steps_the_scheduler_once_per_epoch():
    X, y = blobs()
    model = mlp()
    opt = SGD(model.parameters(), lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    numbaconv.fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=3, seed=0, progress=False, scheduler=sched)
    assert sched.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    with pytest.raises(TypeError, match="scheduler"):
        numbaconv.fit(model, nn.CrossEntropyLoss(), opt, X, y, scheduler=object(), progress=False)


# --------------------------------------------------------------------------- reproducibility


def _run(seed, shuffle_seed):
    X, y = blobs()
    model = mlp(seed, dropout=0.2)  # dropout draws from numbaconv's generator too
    history = numbaconv.fit(model, nn.CrossEntropyLoss(), Adam(model.parameters(), lr=0.01), X, y,
                            epochs=3, batch_size=10, seed=shuffle_seed, progress=False)
    history.pop("time")
    return history, {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("shuffle_seed", [5, None])
def test_same_seed_same_training(shuffle_seed):
    """The same manual_seed (and fit seed) gives the same history and weights, bit for bit."""
    (h1, w1), (h2, w2) = _run(0, shuffle_seed), _run(0, shuffle_seed)
    assert h1 == h2
    for key in w1:
        np.testing.assert_array_equal(w1[key], w2[key], err_msg=key)


def test_shuffle_seed_changes_the_order():
    assert _run(0, 5)[0] != _run(0, 6)[0]


def test_no_shuffle_visits_samples_in_order():
    recorder = ModeRecorder()
    seen = []
    recorder.forward = lambda x: (seen.append(x.copy()), x)[1]
    X = np.arange(10, dtype=np.float64)[:, None] * np.ones((1, 4))
    y = np.zeros((10, 4))
    model = nn.Sequential(recorder, nn.Linear(4, 4, dtype=np.float64))
    numbaconv.fit(model, nn.MSELoss(), SGD(model.parameters(), lr=0.0), X, y, batch_size=4, shuffle=False,
                  progress=False)
    np.testing.assert_array_equal(np.concatenate(seen), X)
    assert [len(s) for s in seen] == [4, 4, 2]


# --------------------------------------------------------------------------- history


def test_history_keys_and_lengths():
    X, y = blobs(40)
    Xv, yv = blobs(20, seed=1)
    model = mlp()
    history = numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.05), X, y, epochs=3,
                            batch_size=16, validation=(Xv, yv), progress=False)
    assert list(history) == ["loss", "accuracy", "val_loss", "val_accuracy", "time"]
    for key, values in history.items():
        assert len(values) == 3 and all(isinstance(v, float) for v in values), key
    assert all(0 <= a <= 1 for a in history["accuracy"] + history["val_accuracy"])
    assert all(t > 0 for t in history["time"])
    # the last validation entry is the trained model's score on the validation set
    final = numbaconv.evaluate(model, nn.CrossEntropyLoss(), Xv, yv)
    assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-5)
    assert history["val_accuracy"][-1] == final["accuracy"]


def test_regression_history_has_no_accuracy():
    X = np.random.default_rng(0).standard_normal((20, 4))
    model = nn.Sequential(nn.Linear(4, 2, dtype=np.float64))
    history = numbaconv.fit(model, nn.MSELoss(), SGD(model.parameters(), lr=0.01), X, X[:, :2].copy(), epochs=2,
                            validation=(X, X[:, :2].copy()), progress=False)
    assert list(history) == ["loss", "val_loss", "time"]


def test_zero_epochs_changes_nothing():
    X, y = blobs(20)
    model = mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    history = numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), X, y, epochs=0,
                            progress=False)
    assert history == {"loss": [], "accuracy": [], "time": []}
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_epoch_loss_is_the_sample_weighted_mean(reduction):
    """With lr=0 the model stays put, so the epoch's loss and accuracy are those of the whole
    set, even when the batch size does not divide N (batches 7, 7, 7, 7, 2)."""
    X, y = blobs(30)
    model = mlp()
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    history = numbaconv.fit(model, loss_fn, SGD(model.parameters(), lr=0.0), X, y, batch_size=7, progress=False)
    model.eval()
    out = model(X)
    whole = float(nn.CrossEntropyLoss()(out, y))
    assert history["loss"][0] == pytest.approx(whole, rel=1e-5)
    assert history["accuracy"][0] == np.mean(out.argmax(1) == y)


def test_segmentation_accuracy_counts_every_position():
    """Class scores (N, C, L) against targets (N, L): accuracy is over all N * L positions."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 2, 5)).astype(np.float64)
    y = rng.integers(0, 2, (6, 5))
    model = nn.Sequential(nn.Conv1d(2, 2, 1, dtype=np.float64))
    result = numbaconv.evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=4)
    out = model(X)
    assert result["accuracy"] == np.mean(out.argmax(1) == y)
    assert result["loss"] == pytest.approx(float(nn.CrossEntropyLoss()(out, y)), rel=1e-12)


# --------------------------------------------------------------------------- modes


def test_fit_trains_in_train_mode_and_restores_each_mode():
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Linear(4, CLASSES), nn.Dropout(0.1))
    model.eval()
    model[2].train()  # a mixed state must come back as it was
    X, y = blobs(20)
    Xv, yv = blobs(10, seed=1)
    numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), X, y, batch_size=8,
                  validation=(Xv, yv), progress=False)
    assert recorder.modes == [True] * 3 + [False] * 2  # three training batches, two validation batches
    assert [m.training for m in model.modules()] == [False, False, False, True]


@pytest.mark.parametrize("call", ["evaluate", "predict"])
def test_evaluate_and_predict_run_in_eval_mode(call):
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Linear(4, CLASSES))
    model.train()
    X, y = blobs(10)
    if call == "evaluate":
        numbaconv.evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=4)
    else:
        numbaconv.predict(model, X, batch_size=4)
    assert recorder.modes == [False, False, False]
    assert all(m.training for m in model.modules())


def test_mode_restored_after_an_error():
    model = mlp()
    model.eval()
    X, y = blobs(10)
    with pytest.raises(ValueError):
        numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), X, y + CLASSES, progress=False)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------- evaluate and predict


def test_evaluate_and_predict_agree_with_a_forward_pass():
    X, y = blobs(23, dtype=np.float64)
    model = mlp(dropout=0.5, dtype=np.float64)
    model.train()
    result = numbaconv.evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=5)
    predicted = numbaconv.predict(model, X, batch_size=5)
    model.eval()
    out = model(X)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(float(nn.CrossEntropyLoss()(out, y)), rel=1e-12)
    assert result["accuracy"] == np.mean(out.argmax(1) == y)
    assert predicted.dtype == np.float64 and predicted.shape == (23, CLASSES)
    np.testing.assert_allclose(predicted, out, rtol=1e-12, atol=1e-14)


def test_evaluate_regression_has_only_loss():
    X = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 1))
    assert list(numbaconv.evaluate(model, nn.MSELoss(), X, X[:, :1].copy())) == ["loss"]


@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_predict_concatenates_batches_in_order(batch_size):
    X = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    out = numbaconv.predict(nn.Sequential(nn.Flatten()), X, batch_size=batch_size)
    np.testing.assert_array_equal(out, X.reshape(10, 6))


# --------------------------------------------------------------------------- progress


def _fit_quietly(progress, epochs=2):
    X, y = blobs(20)
    model = mlp()
    return numbaconv.fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), X, y, epochs=epochs,
                         batch_size=8, validation=(X, y), progress=progress)


def test_progress_true_draws_a_bar(capsys):
    _fit_quietly(True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err and "val_loss" in captured.err


def test_progress_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes "from tqdm import tqdm" fail
    _fit_quietly(True)
    err = capsys.readouterr().err
    assert "epoch 1/2 [" in err and "20/20" in err and "loss" in err and "acc" in err
    assert err.endswith("\n")


@pytest.mark.parametrize("progress", [False, None])
def test_progress_false_is_silent(capsys, progress):
    _fit_quietly(progress)  # None: stderr is captured, not a terminal
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------- input


@pytest.mark.parametrize("shuffle", [True, False])
def test_inputs_not_modified(shuffle):
    X, y = blobs(20)
    Xv, yv = blobs(10, seed=1)
    check = unmodified(X, y, Xv, yv)
    model = mlp()
    numbaconv.fit(model, nn.CrossEntropyLoss(), Adam(model.parameters()), X, y, epochs=2, batch_size=6,
                  validation=(Xv, yv), shuffle=shuffle, progress=False)
    numbaconv.evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=6)
    numbaconv.predict(model, X, batch_size=6)
    check()


def _bad_fit(**changes):
    X, y = blobs(12)
    model = mlp()
    args = dict(model=model, loss_fn=nn.CrossEntropyLoss(), optimizer=SGD(model.parameters(), lr=0.1), X=X, y=y,
                progress=False)
    args.update(changes)
    return lambda: numbaconv.fit(**args)


X12, Y12 = blobs(12)
BAD = [
    ("X a list", _bad_fit(X=X12.tolist()), TypeError, r"fit: X must be a numpy.ndarray of samples, got list"),
    ("y a list", _bad_fit(y=Y12.tolist()), TypeError, r"fit: y must be a numpy.ndarray of targets, got list"),
    ("X of strings", _bad_fit(X=np.array(["a"] * 12)), TypeError, r"fit: X must hold real numbers, got dtype <U1"),
    ("X empty", _bad_fit(X=X12[:0], y=Y12[:0]), ValueError, r"X must have shape \(N, ...\) with N >= 1 samples"),
    ("X 0-d", _bad_fit(X=np.array(1.0)), ValueError, r"X must have shape \(N, ...\) with N >= 1 samples, got shape \(\)"),
    ("lengths differ", _bad_fit(y=Y12[:10]), ValueError,
     r"X and y must hold the same number of samples: X has shape \(12, 4\), y has shape \(10,\)"),
    ("float labels for cross entropy", _bad_fit(y=Y12.astype(np.float32)), TypeError,
     r"fit: CrossEntropyLoss needs y of integer class indices, got dtype float32"),
    ("int targets for MSE", _bad_fit(loss_fn=nn.MSELoss(), y=np.zeros((12, 3), np.int64)), TypeError,
     r"fit: MSELoss needs float y of the model's dtype, got dtype int64"),
    ("epochs negative", _bad_fit(epochs=-1), ValueError, r"fit: epochs must be >= 0, got -1"),
    ("epochs float", _bad_fit(epochs=2.0), TypeError, r"fit: epochs must be an int >= 0, got 2.0"),
    ("batch_size zero", _bad_fit(batch_size=0), ValueError, r"fit: batch_size must be >= 1, got 0"),
    ("batch_size bool", _bad_fit(batch_size=True), TypeError, r"fit: batch_size must be an int >= 1, got True"),
    ("validation one array", _bad_fit(validation=X12), TypeError,
     r"validation must be None or a pair \(X_val, y_val\), got ndarray"),
    ("validation lengths", _bad_fit(validation=(X12, Y12[:3])), ValueError,
     r"validation X and validation y must hold the same number of samples"),
    ("validation float labels", _bad_fit(validation=(X12, Y12.astype(np.float64))), TypeError,
     r"CrossEntropyLoss needs validation y of integer class indices"),
    ("shuffle not a bool", _bad_fit(shuffle="yes"), TypeError, r"fit: shuffle must be a bool, got 'yes'"),
    ("seed negative", _bad_fit(seed=-3), ValueError, r"fit: seed must be a numpy.random.Generator, a non-negative int seed or None, got -3"),
    ("seed float", _bad_fit(seed=1.5), TypeError, r"fit: seed must be a numpy.random.Generator, a non-negative int seed or None, got 1.5"),
    ("progress a string", _bad_fit(progress="auto"), TypeError, r"progress must be None \(automatic\), True or False"),
    ("model not a module", _bad_fit(model=lambda x: x), TypeError, r"fit: model must be a numbaconv.nn.Module, got function"),
    ("loss without backward", _bad_fit(loss_fn=lambda out, y: 0.0), TypeError,
     r"loss_fn must be a loss module with a backward method"),
    ("optimizer without step", _bad_fit(optimizer=object()), TypeError, r"optimizer must have a step method.*got object"),
    ("unreduced loss", _bad_fit(loss_fn=nn.CrossEntropyLoss(reduction="none")), ValueError,
     r"loss_fn must return a scalar \(reduction 'mean' or 'sum'\), got shape \(12,\)"),
    ("evaluate lengths", lambda: numbaconv.evaluate(mlp(), nn.CrossEntropyLoss(), X12, Y12[:5]), ValueError,
     r"evaluate: X and y must hold the same number"),
    ("evaluate batch_size", lambda: numbaconv.evaluate(mlp(), nn.CrossEntropyLoss(), X12, Y12, batch_size=-1),
     ValueError, r"evaluate: batch_size must be >= 1, got -1"),
    ("predict list", lambda: numbaconv.predict(mlp(), X12.tolist()), TypeError, r"predict: X must be a numpy.ndarray"),
    ("predict batch_size", lambda: numbaconv.predict(mlp(), X12, batch_size=2.5), TypeError,
     r"predict: batch_size must be an int >= 1, got 2.5"),
    ("predict model", lambda: numbaconv.predict(None, X12), TypeError, r"predict: model must be a numbaconv.nn.Module"),
]


@pytest.mark.parametrize("call, exc, match", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
