"""StackedModule: E copies of any nn.Module train exactly as each would alone, and apart."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.training.stacked import StackedModule  # noqa: E402

torch.set_num_threads(1)

E, B, N_CLASSES = 3, 4, 3
SEEDS = (11, 22, 33)
LR = 0.1


class MLP(nn.Module):
    """No buffers: the vmap mode."""

    def __init__(self, in_shape, n_classes):
        super().__init__()
        c, h, w = in_shape
        self.hidden = nn.Linear(c * h * w, 8)
        self.out = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


class ConvBN(nn.Module):
    """BatchNorm (running statistics are buffers): the loop mode."""

    def __init__(self, in_shape, n_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Counter(nn.Module):
    """A buffer that forward replaces (not updated in place): it must still reach the stack."""

    def __init__(self, in_shape, n_classes):
        super().__init__()
        self.fc = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], n_classes)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.seen = self.seen + x.shape[0]
        return self.fc(x.flatten(1))


SHAPES = {MLP: (1, 6, 6), ConvBN: (2, 5, 5), Counter: (1, 6, 6)}
MODES = {MLP: "vmap", ConvBN: "loop"}


@pytest.fixture(autouse=True)
def float64():
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(prev)


def make(factory, mode=None):
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    return StackedModule(factory, E, in_shape=SHAPES[factory], n_classes=N_CLASSES, mode=mode).init_(gens)


def alone(factory, e):
    torch.manual_seed(SEEDS[e])
    return factory(SHAPES[factory], N_CLASSES)


def batches(factory, seed=0):
    """Padded batches as the trainer lays them out: real rows first, then zero rows."""
    counts = [(4, 4, 4), (4, 2, 0), (1, 4, 3), (3, 0, 2)]  # model 2 has no row at step 1, model 1 none at 3
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in counts:
        mask = torch.zeros(B, E)
        for e, n in enumerate(step):
            mask[:n, e] = 1
        x = torch.randn(B, E, *SHAPES[factory], generator=g) * mask[:, :, None, None, None]
        y = torch.randint(0, N_CLASSES, (B, E), generator=g)
        out.append((x, y, mask))
    return out


def train_stacked(net, data):
    """The trainer's step: masked per-model mean cross-entropy, grads of net.weights, SGD per model."""
    net.train()
    for x, y, mask in data:
        logits = net(x.reshape(B, -1, *x.shape[3:]), mask)
        ce = F.cross_entropy(logits.reshape(B * E, -1), y.reshape(-1), reduction="none").reshape(B, E)
        count = mask.sum(dim=0)
        loss = ((ce * mask).sum(dim=0) / count.clamp_min(1)).sum()
        grads = torch.autograd.grad(loss, list(net.weights))
        with torch.no_grad():
            for p, g in zip(net.weights, grads):
                active = (count > 0).view(-1, *[1] * (p.dim() - 1))
                p.sub_(torch.where(active, LR * g, 0.0))
    return net


def train_alone(model, data, e):
    """Model e as an ordinary module with torch.optim.SGD, on its real rows only."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y, mask in data:
        rows = mask[:, e] != 0
        if not rows.any():
            continue
        opt.zero_grad()
        F.cross_entropy(model(x[rows, e]), y[rows, e]).backward()
        opt.step()
    return model


def assert_state_close(got: dict, want: dict, tol=1e-10):
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        torch.testing.assert_close(got[key], value, rtol=0, atol=tol, msg=key)


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize("factory", [MLP, ConvBN])
def test_mode_weights_and_init_equal_factory_modules(factory):
    rng = torch.get_rng_state()
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    gen_states = [g.get_state() for g in gens]
    net = StackedModule(factory, E, in_shape=SHAPES[factory], n_classes=N_CLASSES)
    assert net.init_(gens) is net
    assert torch.equal(torch.get_rng_state(), rng)  # neither building nor init_ moves the global generator
    assert all(torch.equal(g.get_state(), s) for g, s in zip(gens, gen_states))  # nor draws from the models'
    assert net.mode == MODES[factory] and net.n_models == E
    ref = alone(factory, 0)
    assert [tuple(w.shape) for w in net.weights] == [(E, *p.shape) for p in ref.parameters()]
    assert net.param_names == tuple(name for name, _ in ref.named_parameters())
    for e in range(E):
        want = alone(factory, e).state_dict()
        got = net.model_state(e)
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


def test_forced_loop_mode_and_refused_vmap():
    assert make(MLP, mode="loop").mode == "loop"
    with pytest.raises(InvalidParameterError, match="without buffers"):
        StackedModule(ConvBN, E, in_shape=SHAPES[ConvBN], n_classes=N_CLASSES, mode="vmap")
    with pytest.raises(InvalidParameterError, match="mode"):
        StackedModule(MLP, E, in_shape=SHAPES[MLP], n_classes=N_CLASSES, mode="fast")


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("factory,mode", [(MLP, None), (ConvBN, None), (MLP, "loop")])
def test_training_equals_each_model_alone(factory, mode):
    data = batches(factory)
    net = train_stacked(make(factory, mode), data)
    for e in range(E):
        ref = train_alone(alone(factory, e), data, e)
        assert_state_close(net.model_state(e), ref.state_dict())
        if "bn.num_batches_tracked" in ref.state_dict():  # steps without rows were not run
            assert int(net.model_state(e)["bn.num_batches_tracked"]) == sum(int(m[:, e].any()) for _, _, m in data)


@pytest.mark.parametrize("factory", [MLP, ConvBN])
def test_padded_rows_are_zero_and_get_no_gradient(factory):
    net = make(factory)
    x, _, mask = batches(factory)[1]
    mask[0, 0] = 0  # a padded row in the middle: any pattern works, not only a prefix
    x = x * mask[:, :, None, None, None]
    out = net(x.reshape(B, -1, *x.shape[3:]), mask)
    assert out.shape == (B, E, N_CLASSES)
    assert torch.equal(out[mask == 0], torch.zeros_like(out[mask == 0]))
    grads = torch.autograd.grad(out.square().sum(), list(net.weights))
    assert all(torch.equal(g[2], torch.zeros_like(g[2])) for g in grads)  # model 2: no real row


@pytest.mark.parametrize("factory", [MLP, ConvBN])
def test_isolation_one_changed_row_changes_only_its_model(factory):
    data = batches(factory)
    poisoned = [(x.clone(), y, m) for x, y, m in data]
    poisoned[0][0][1, 1] += 1.0  # one real row of model 1
    a = train_stacked(make(factory), data)
    b = train_stacked(make(factory), poisoned)
    for e in range(E):
        sa, sb = a.model_state(e), b.model_state(e)
        same = all(torch.equal(sa[k], sb[k]) for k in sa)
        assert same == (e != 1), e


@settings(max_examples=15, deadline=None)
@given(counts=st.lists(st.integers(0, B), min_size=E, max_size=E).filter(any), loop=st.booleans())
def test_forward_backward_equal_alone_for_any_row_counts(counts, loop):
    factory = ConvBN if loop else MLP
    net = make(factory)
    mask = torch.zeros(B, E)
    for e, n in enumerate(counts):
        mask[:n, e] = 1
    x = torch.randn(B, E, *SHAPES[factory]) * mask[:, :, None, None, None]
    out = net(x.reshape(B, -1, *x.shape[3:]), mask)
    out.square().sum().backward()
    for e, n in enumerate(counts):
        if n == 0:
            continue
        ref = alone(factory, e).train()
        y = ref(x[:n, e])
        torch.testing.assert_close(out[:n, e], y, rtol=0, atol=1e-12)
        y.square().sum().backward()
        for w, p in zip(net.weights, ref.parameters()):
            torch.testing.assert_close(w.grad[e], p.grad, rtol=0, atol=1e-10)


def test_replaced_buffer_is_written_back():
    net = make(Counter)
    assert net.mode == "loop"
    x, _, mask = batches(MLP)[1]  # row counts 4, 2, 0
    net(x.reshape(B, -1, *x.shape[3:]), mask)
    assert net.buffer_0.tolist() == [4.0, 2.0, 0.0]


# ---------------------------------------------------------------------------- eval, state
@pytest.mark.parametrize("factory", [MLP, ConvBN])
def test_eval_runs_all_rows_like_extracted_modules(factory):
    net = train_stacked(make(factory), batches(factory)).eval()
    x = torch.randn(B, E, *SHAPES[factory])
    out = net(x.reshape(B, -1, *x.shape[3:]))  # no mask in eval mode
    for e in range(E):
        model = net.extract(e).eval()
        assert type(model) is factory
        assert_state_close(model.state_dict(), net.model_state(e), tol=0)
        torch.testing.assert_close(out[:, e], model(x[:, e]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("factory", [MLP, ConvBN])
def test_state_dict_round_trip_and_model_state(factory):
    net = train_stacked(make(factory), batches(factory))
    fresh = StackedModule(factory, E, in_shape=SHAPES[factory], n_classes=N_CLASSES)
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert_state_close(fresh.state_dict(), net.state_dict(), tol=0)
    if factory is ConvBN:  # buffers travel too
        assert any(k.startswith("buffer_") for k in net.state_dict())
    # one model in and out
    other = make(factory)
    other.load_model_state(2, net.model_state(0))
    assert_state_close(other.model_state(2), net.model_state(0), tol=0)
    assert_state_close(other.model_state(1), make(factory).model_state(1), tol=0)  # the others untouched
    with pytest.raises(InvalidParameterError, match="missing"):
        other.load_model_state(0, {k: v for k, v in net.model_state(0).items() if "bias" not in k})
    # device and dtype moves keep the interface
    moved = net.to("cpu").float()
    assert moved is net and all(w.dtype == torch.float32 for w in net.weights)
    assert all(t.dtype == torch.float32 for t in net.extract(0).state_dict().values() if t.is_floating_point())


# ---------------------------------------------------------------------------- errors
def wrong_width(in_shape, n_classes):
    return MLP(in_shape, n_classes + 1)


class Unused(MLP):
    def __init__(self, in_shape, n_classes):
        super().__init__(in_shape, n_classes)
        self.spare = nn.Linear(2, 2)


@pytest.mark.parametrize("factory,match", [
    (3, "callable"),
    (lambda s, n: 5, "must return a torch.nn.Module"),
    (lambda s, n: nn.Flatten(), "no parameters"),
    (wrong_width, r"logits of shape \(2, 3\)"),
    (lambda s, n: nn.Linear(7, n), "fails on a probe batch"),
    (Unused, "spare.weight"),
])
def test_bad_factories(factory, match):
    with pytest.raises(InvalidParameterError, match=match):
        StackedModule(factory, E, in_shape=(1, 6, 6), n_classes=N_CLASSES)


def test_bad_calls():
    with pytest.raises(InvalidParameterError, match="in_shape"):
        StackedModule(MLP, E, in_shape=(6, 6), n_classes=N_CLASSES)
    with pytest.raises(InvalidParameterError, match="n_models"):
        StackedModule(MLP, 0, in_shape=(1, 6, 6), n_classes=N_CLASSES)
    net = make(MLP)
    with pytest.raises(InvalidParameterError, match="need 3 generators"):
        net.init_([torch.Generator()])
    x = torch.zeros(B, E, 6, 6)
    with pytest.raises(InvalidParameterError, match="needs a mask"):
        net.train()(x)
    with pytest.raises(InvalidParameterError, match="mask must have shape"):
        net(x, torch.ones(B, E + 1))
    with pytest.raises(InvalidParameterError, match="input must have shape"):
        net(torch.zeros(B, E, 5, 6), torch.ones(B, E))


def test_both_model_stacks_provide_the_protocol_the_trainer_uses():
    import torch

    from runoff.training.batched_net import BatchedNet
    from runoff.training.models import architecture
    from runoff.training.stack import ModelStack
    from runoff.training.stacked import StackedModule

    batched = BatchedNet(architecture("small", in_channels=1, n_classes=3, image_size=(8, 8)), 2)
    stacked = StackedModule(lambda in_shape, n: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n)), 2,
                            in_shape=(1, 8, 8), n_classes=3)
    for stack in (batched, stacked):
        assert isinstance(stack, ModelStack) and stack.n_models == 2
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        assert stack.init_(gens) is stack
        state = stack.model_state(1)
        stack.load_model_state(0, state)
        for key, value in stack.model_state(0).items():
            assert torch.equal(value, state[key])
        assert isinstance(stack.extract(0), torch.nn.Module)
    assert not isinstance(torch.nn.Linear(2, 2), ModelStack)
