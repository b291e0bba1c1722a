"""SGD and Adam: step-for-step parity with torch.optim on a small CNN and on raw arrays with given
gradients, parameter groups, skipped parameters, zero_grad, dtypes, and bad arguments."""

import numpy as np
import pytest

import numbaconv
from numbaconv import nn
from numbaconv import optim
from numbaconv.optim import SGD, Adam

# (optimizer, keyword arguments): every branch of both update rules
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in CONFIGS]
# float64 agrees to rounding; float32 carries torch's and numbaconv's different gradient rounding
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
STEPS = 4


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def assert_params_close(ours, theirs, dtype, what):
    """Each array within rtol of the reference, relative to the array's largest entry."""
    for (name, got), ref in zip(ours, theirs):
        assert got.dtype == np.dtype(dtype), f"{what}: {name} changed dtype to {got.dtype}"
        scale = max(1e-3, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=RTOL[dtype] * scale, err_msg=f"{what}: {name}")


def numbaconv_model(dtype):
    numbaconv.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=dtype),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, bias=False, dtype=dtype),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(16, 5, dtype=dtype),
    )


def torch_copy(torch, model, dtype):
    """The same network in torch.nn, loaded with ``model``'s weights."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 3, stride=2, bias=False),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    ).to(tdtype)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return net


def make(module, name, params, kwargs):
    return getattr(module, name)(params, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)
def test_training_steps_match_torch(torch, name, kwargs, dtype):
    """Several forward/backward/step rounds on a CNN: the same parameters after every step."""
    rng = np.random.default_rng(3)
    model = numbaconv_model(dtype)
    net = torch_copy(torch, model, dtype)
    opt = make(numbaconv.optim, name, model.parameters(), kwargs)
    topt = make(torch.optim, name, net.parameters(), kwargs)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(STEPS):
        x = rng.standard_normal((6, 2, 5, 5)).astype(dtype)
        y = rng.integers(0, 5, 6)
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
        theirs = [t.detach().numpy() for t in net.state_dict().values()]
        assert_params_close(list(model.state_dict().items()), theirs, dtype, f"after step {step + 1}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)
def test_update_rule_matches_torch(torch, name, kwargs, dtype):
    """The rule alone: given gradients (one step with none, which both skip), a learning rate
    changed half-way through param_groups, and two parameters of different shapes."""
    rng = np.random.default_rng(11)
    start = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    ours = [nn.Parameter(a) for a in start]
    theirs = [torch.tensor(a, requires_grad=True) for a in start]
    opt = make(numbaconv.optim, name, ours, kwargs)
    topt = make(torch.optim, name, theirs, kwargs)
    for step in range(6):
        if step == 3:
            for o in (opt, topt):
                o.param_groups[0]["lr"] *= 0.5
        for p, t in zip(ours, theirs):
            if step == 2 and p is ours[1]:
                p.grad, t.grad = None, None
                continue
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, t.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        assert_params_close([(f"p{i}", p.data) for i, p in enumerate(ours)],
                            [t.detach().numpy() for t in theirs], dtype, f"after step {step + 1}")
    if name == "Adam":
        assert opt.state[ours[0]]["step"] == 6 and opt.state[ours[1]]["step"] == 5


def test_param_groups_match_torch(torch):
    """Per-group hyperparameters override the defaults, as in torch."""
    model = numbaconv_model(np.float64)
    net = torch_copy(torch, model, np.float64)
    groups = lambda m: [  # noqa: E731
        {"params": list(m[0].parameters()), "lr": 0.2, "momentum": 0.5},
        {"params": list(m[2].parameters()) + list(m[5].parameters())},
    ]
    opt = SGD(groups(model), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(groups(net), lr=0.05, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[1]["momentum"] == 0.9
    rng = np.random.default_rng(5)
    for step in range(3):
        x, grad_out = rng.standard_normal((4, 2, 5, 5)), rng.standard_normal((4, 5))
        opt.zero_grad()
        model(x)
        model.backward(grad_out, input_grad=False)
        opt.step()
        topt.zero_grad()
        net(torch.from_numpy(x)).backward(torch.from_numpy(grad_out))
        topt.step()
        theirs = [t.detach().numpy() for t in net.state_dict().values()]
        assert_params_close(list(model.state_dict().items()), theirs, np.float64, f"after step {step + 1}")


# --------------------------------------------------------------------------- behavior


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_skips_frozen_and_gradless_parameters(cls):
    a, b, c = (nn.Parameter(np.ones(3)) for _ in range(3))
    b.requires_grad = False
    a.grad, b.grad = np.ones(3), np.ones(3)  # c has no gradient
    opt = cls([a, b, c], lr=0.1, weight_decay=0.1)
    opt.step()
    assert not np.array_equal(a.data, np.ones(3))
    np.testing.assert_array_equal(b.data, np.ones(3))
    np.testing.assert_array_equal(c.data, np.ones(3))
    assert b not in opt.state and c not in opt.state


@pytest.mark.parametrize("cls, kwargs", [(SGD, dict(momentum=0.9, weight_decay=0.1, nesterov=True)),
                                         (Adam, dict(weight_decay=0.1, amsgrad=True))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_keeps_dtype_and_leaves_grad(cls, kwargs, dtype):
    """The parameter's array is updated in place (state_dict arrays follow), keeps its dtype,
    the buffers share it, and the gradient is not touched."""
    p = nn.Parameter(np.arange(6, dtype=dtype).reshape(2, 3))
    data = p.data
    p.grad = np.full((2, 3), 0.5, dtype)
    grad = p.grad.copy()
    opt = cls([p], lr=0.1, **kwargs)
    for _ in range(2):
        opt.step()
    assert p.data is data and p.data.dtype == dtype
    np.testing.assert_array_equal(p.grad, grad)
    for value in opt.state[p].values():
        if isinstance(value, np.ndarray):
            assert value.dtype == dtype and value.shape == (2, 3)


def test_state_entries():
    p = nn.Parameter(np.zeros(2))
    p.grad = np.ones(2)
    sgd, adam = SGD([p], lr=0.1, momentum=0.9), Adam([p])
    sgd.step()
    adam.step()
    assert set(sgd.state[p]) == {"momentum_buffer"}
    assert set(adam.state[p]) == {"step", "exp_avg", "exp_avg_sq"} and adam.state[p]["step"] == 1


def test_plain_sgd_keeps_no_state():
    p = nn.Parameter(np.zeros(2))
    p.grad = np.ones(2)
    opt = SGD([p], lr=0.5)
    opt.step()
    np.testing.assert_array_equal(p.data, [-0.5, -0.5])
    assert not opt.state.get(p)


def test_zero_grad():
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64))
    opt = SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    grads = [p.grad for p in model.parameters()]
    opt.zero_grad(set_to_none=False)
    for p, g in zip(model.parameters(), grads):
        assert p.grad is g and not p.grad.any()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_lr_schedule_through_param_groups():
    p = nn.Parameter(np.zeros(1))
    opt = SGD([p], lr=1.0)
    for lr in (1.0, 0.5, 0.25):
        opt.param_groups[0]["lr"] = lr
        p.grad = np.ones(1)
        opt.step()
    np.testing.assert_array_equal(p.data, [-1.75])


def test_accepts_generators_and_shared_parameters():
    """model.parameters() is a generator (consumed once) and lists a shared parameter once."""
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    opt = Adam(model.parameters())
    assert len(opt.param_groups[0]["params"]) == 2


def test_repr():
    text = repr(SGD([nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9))
    assert text.startswith("SGD (") and "lr: 0.1" in text and "momentum: 0.9" in text


# --------------------------------------------------------------------------- bad arguments


def _p():
    return [nn.Parameter(np.zeros(2))]


BAD = [
    ("SGD negative lr", lambda: SGD(_p(), lr=-0.1), ValueError, r"SGD: lr must be >= 0, got -0.1"),
    ("SGD NaN lr", lambda: SGD(_p(), lr=float("nan")), ValueError, r"SGD: lr must be >= 0, got nan"),
    ("SGD string lr", lambda: SGD(_p(), lr="0.1"), TypeError, r"SGD: lr must be a real number >= 0, got '0.1'"),
    ("SGD bool lr", lambda: SGD(_p(), lr=True), TypeError, r"SGD: lr must be a real number"),
    ("SGD negative momentum", lambda: SGD(_p(), lr=0.1, momentum=-0.5), ValueError, r"momentum must be >= 0, got -0.5"),
    ("SGD negative dampening", lambda: SGD(_p(), lr=0.1, dampening=-1), ValueError, r"dampening must be >= 0"),
    ("SGD negative weight_decay", lambda: SGD(_p(), lr=0.1, weight_decay=-1), ValueError, r"weight_decay must be >= 0"),
    ("SGD nesterov without momentum", lambda: SGD(_p(), lr=0.1, nesterov=True), ValueError,
     r"nesterov=True needs momentum > 0 and dampening = 0, got momentum=0"),
    ("SGD nesterov with dampening", lambda: SGD(_p(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, r"dampening=0.1"),
    ("SGD nesterov not a bool", lambda: SGD(_p(), lr=0.1, momentum=0.9, nesterov="yes"), TypeError,
     r"nesterov must be a bool, got 'yes'"),
    ("Adam negative lr", lambda: Adam(_p(), lr=-1), ValueError, r"Adam: lr must be >= 0, got -1"),
    ("Adam negative eps", lambda: Adam(_p(), eps=-1e-8), ValueError, r"Adam: eps must be >= 0, got -1e-08"),
    ("Adam beta1 = 1", lambda: Adam(_p(), betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\), got 1.0"),
    ("Adam negative beta2", lambda: Adam(_p(), betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    ("Adam one beta", lambda: Adam(_p(), betas=0.9), TypeError, r"betas must be a pair of real numbers in \[0, 1\), got 0.9"),
    ("Adam three betas", lambda: Adam(_p(), betas=(0.9, 0.99, 0.9)), TypeError, r"betas must be a pair"),
    ("Adam negative weight_decay", lambda: Adam(_p(), weight_decay=-0.1), ValueError, r"weight_decay must be >= 0"),
    ("Adam amsgrad not a bool", lambda: Adam(_p(), amsgrad=None), TypeError, r"amsgrad must be a bool, got None"),
    ("empty list", lambda: SGD([], lr=0.1), ValueError, r"SGD: params must hold at least one parameter, got an empty"),
    ("empty generator", lambda: Adam(nn.ReLU().parameters()), ValueError, r"Adam: params must hold at least one"),
    ("a module", lambda: SGD(nn.Linear(2, 2), lr=0.1), TypeError,
     r"params must be an iterable of numbaconv.nn.Parameter \(such as model.parameters\(\)\).*got Linear"),
    ("one parameter", lambda: SGD(_p()[0], lr=0.1), TypeError, r"params must be an iterable.*got Parameter"),
    ("an array", lambda: SGD(np.zeros(3), lr=0.1), TypeError, r"params must be an iterable.*got ndarray"),
    ("not iterable", lambda: SGD(3, lr=0.1), TypeError, r"params must be an iterable.*got int"),
    ("arrays in the list", lambda: SGD([np.zeros(3)], lr=0.1), TypeError,
     r"must hold numbaconv.nn.Parameter objects, got ndarray at index 0 \(wrap arrays in numbaconv.nn.Parameter\)"),
    ("duplicate parameter", lambda: SGD(_p() * 2, lr=0.1), ValueError, r"each parameter once, got a duplicate at index 1"),
    ("mixed groups and parameters", lambda: SGD([{"params": _p()}, *_p()], lr=0.1), TypeError,
     r"either Parameters or parameter-group dicts"),
    ("group without params", lambda: SGD([{"lr": 0.1}], lr=0.1), ValueError, r"must have a 'params' entry, got keys \['lr'\]"),
    ("bad lr in a group", lambda: SGD([{"params": _p(), "lr": -2}], lr=0.1), ValueError, r"SGD: lr must be >= 0, got -2"),
]


@pytest.mark.parametrize("call, exc, match", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_parameter_in_two_groups():
    p = _p()
    with pytest.raises(ValueError, match="more than one parameter group"):
        Adam([{"params": p}, {"params": p}])


def test_bad_lr_set_between_steps():
    p = nn.Parameter(np.zeros(2))
    p.grad = np.ones(2)
    opt = SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="SGD: lr must be >= 0, got -1.0"):
        opt.step()
    np.testing.assert_array_equal(p.data, [0, 0])


def test_gradient_of_the_wrong_shape():
    p = nn.Parameter(np.zeros((2, 3)))
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match=r"a parameter of shape \(2, 3\) has a gradient of shape \(3,\)"):
        SGD([p], lr=0.1).step()


def test_step_with_closure():
    p = nn.Parameter(np.zeros(2))

    def closure():
        p.grad = np.ones(2)
        return 3.0

    opt = SGD([p], lr=0.5)
    assert opt.step(closure) == 3.0 and opt.step() is None
    np.testing.assert_array_equal(p.data, [-1.0, -1.0])
    with pytest.raises(TypeError, match="closure must be None or a function returning the loss, got 1"):
        opt.step(1)


def test_step_lr_matches_torch():
    torch = pytest.importorskip("torch")
    param = nn.Parameter(np.zeros(3))
    opt = optim.SGD([param], lr=0.5)
    sched = optim.StepLR(opt, step_size=2, gamma=0.3)
    t_param = torch.zeros(3, requires_grad=True)
    t_opt = torch.optim.SGD([t_param], lr=0.5)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, step_size=2, gamma=0.3)
    for _ in range(7):
        assert sched.get_last_lr() == pytest.approx(t_sched.get_last_lr(), rel=1e-15)
        t_opt.step()
        sched.step()
        t_sched.step()


@pytest.mark.parametrize("kwargs, error", [
    (dict(step_size=0), ValueError), (dict(step_size=1.5), ValueError), (dict(step_size=1, gamma=-1), ValueError),
    (dict(step_size=1, gamma="a"), TypeError),
])
def test_step_lr_bad_arguments(kwargs, error):
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(error, match="StepLR"):
        optim.StepLR(opt, **kwargs)
