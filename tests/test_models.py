"""Base architectures: the batched module computes exactly what E separate models compute."""

import pytest

torch = pytest.importorskip("torch")

from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.training.models import BatchedNet, architecture, build_model  # noqa: E402

torch.set_num_threads(1)


def test_nin_matches_reference_description():
    spec = architecture("nin", in_channels=3, n_classes=10)
    convs = [layer[1:4] for layer in spec if layer[0] == "conv"]
    assert convs == [(3, 192, 5), (192, 160, 1), (160, 96, 1), (96, 192, 5), (192, 192, 1),
                     (192, 192, 1), (192, 192, 3), (192, 192, 1), (192, 192, 1)]
    kinds = [layer[0] for layer in spec]
    assert kinds.count("bn") == 9 and kinds.count("relu") == 9
    assert ("maxpool", 3, 2, 1) in spec and ("avgpool", 3, 2, 1) in spec
    assert spec[-2:] == [("gap",), ("linear", 192, 10)]
    model = build_model(spec)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,shape", [("small", (1, 8, 8)), ("nin", (3, 16, 16)), ("mlp", (3, 5, 4))])
def test_batched_forward_backward_equals_separate_models(name, shape):
    c, h, w = shape
    spec = architecture(name, in_channels=c, n_classes=4, image_size=(h, w))
    e_count, b = 3, 4
    net = BatchedNet(spec, e_count).init_([torch.Generator().manual_seed(i) for i in range(e_count)]).double()
    singles = [net.extract(e).double().train() for e in range(e_count)]
    mask = torch.ones(b, e_count, dtype=torch.float64)
    mask[2:, 1] = 0  # model 1 has a short batch
    mask[:, 2] = 0  # model 2 has none
    x = torch.randn(b, e_count, c, h, w, dtype=torch.float64) * mask[:, :, None, None, None]
    out = net(x.reshape(b, e_count * c, h, w), mask)
    out.square().sum().backward()
    assert torch.equal(out[2:, 1], torch.zeros_like(out[2:, 1])) and torch.equal(out[:, 2], torch.zeros_like(out[:, 2]))
    for e, model in enumerate(singles):
        n = int(mask[:, e].sum())
        if n == 0:
            assert all(float(p.grad[e].abs().max()) == 0 for p in net.weights)
            # BatchNorm running statistics of a model without samples are untouched
            if spec[1][0] == "bn":
                assert torch.equal(net.model_state(e)["1.running_mean"], torch.zeros(spec[1][1], dtype=torch.float64))
            continue
        ref = model(x[:n, e])
        torch.testing.assert_close(out[:n, e], ref, rtol=1e-9, atol=1e-9)
        ref.square().sum().backward()
        for p, q in zip(model.parameters(), net.weights):
            torch.testing.assert_close(q.grad[e], p.grad, rtol=1e-8, atol=1e-9)
        state = net.model_state(e)
        for key, val in model.state_dict().items():
            if "running" in key:
                torch.testing.assert_close(state[key], val, rtol=1e-9, atol=1e-12)


def test_eval_mode_and_roundtrip():
    spec = architecture("small", in_channels=1, n_classes=10)
    net = BatchedNet(spec, 2).init_([torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    other = BatchedNet(spec, 2)
    for e in range(2):
        other.load_model_state(e, net.extract(e).state_dict())
    net.eval()
    other.eval()
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(net(x), other(x))
    single = net.extract(1).eval()
    torch.testing.assert_close(net(x)[:, 1], single(x[:, 1:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["pytorch", "rotnet"])
def test_init_is_per_model(rule):
    spec = architecture("small", in_channels=1, n_classes=10)
    a = BatchedNet(spec, 3).init_([torch.Generator().manual_seed(s) for s in (1, 2, 3)], rule=rule)
    b = BatchedNet(spec, 2).init_([torch.Generator().manual_seed(s) for s in (9, 2)], rule=rule)
    assert all(torch.equal(pa[1], pb[1]) for pa, pb in zip(a.weights, b.weights))
    assert not torch.equal(a.weights[0][0], a.weights[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,channels,classes", [("nin", 1, 10), ("nin", 3, 43), ("small", 1, 10), ("mlp", 3, 10)])
def test_pytorch_rule_is_torch_default_init_bit_for_bit(name, channels, classes, dtype):
    # The published scripts seed torch and then build their network: every layer draws its
    # default initialisation from the global generator, in construction order. A model drawn
    # by the "pytorch" rule from its own generator with the same seed is that network, bit for
    # bit, and leaves its generator where the construction leaves torch's.
    spec = architecture(name, in_channels=channels, n_classes=classes, image_size=(6, 5))
    seeds = (4, 9)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        net = BatchedNet(spec, len(seeds)).init_(gens, rule="pytorch")
        for e, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(spec)  # torch.nn layers: their own reset_parameters()
                state_after = torch.get_rng_state()
            ours = net.model_state(e)
            ref = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            assert set(ours) == set(ref)
            for key, val in ref.items():
                assert val.dtype == dtype and torch.equal(ours[key], val), key
            assert torch.equal(gens[e].get_state(), state_after)
    finally:
        torch.set_default_dtype(prev)


def test_init_rules_draw_their_distributions():
    spec = architecture("nin", in_channels=3, n_classes=10)
    convs = [i for i, (kind, *_rest) in enumerate(BatchedNet(spec, 1)._plan) if kind == "conv"]
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    torch_net = BatchedNet(spec, 4).init_(gens(), rule="pytorch")
    rot_net = BatchedNet(spec, 4).init_(gens(), rule="rotnet")
    for i in convs:
        _, cin, cout, k, _s, _p = spec[i]
        a = torch_net.model_state(0)[f"{i}.weight"]
        bound = 1 / (cin * k * k) ** 0.5  # kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in))
        assert float(a.abs().max()) <= bound * (1 + 1e-6) and float(a.abs().max()) > 0.95 * bound
        r = torch.stack([rot_net.model_state(e)[f"{i}.weight"] for e in range(4)])
        assert float(r.std()) == pytest.approx((2 / (k * k * cout)) ** 0.5, rel=0.1)
    last = len(spec) - 1
    bias = torch.stack([torch_net.model_state(e)[f"{last}.bias"] for e in range(4)])
    assert float(bias.abs().max()) <= 192 ** -0.5 and bool((bias != 0).all())
    assert all(torch.equal(rot_net.model_state(e)[f"{last}.bias"], torch.zeros(10)) for e in range(4))
    for net in (torch_net, rot_net):
        state = net.model_state(2)
        assert torch.equal(state["1.weight"], torch.ones(192)) and torch.equal(state["1.bias"], torch.zeros(192))
    with pytest.raises(InvalidParameterError, match="^unknown initialisation rule 'xavier'; choose one of: pytorch, rotnet$"):
        BatchedNet(spec, 1).init_(gens()[:1], rule="xavier")


def test_unknown_architecture():
    with pytest.raises(InvalidParameterError, match="^unknown architecture 'resnet'; choose one of: nin, small, mlp$") as info:
        architecture("resnet", in_channels=3, n_classes=10)
    message = str(info.value)
    assert "'resnet'" in message
    # Every name the message offers is a working architecture, and names are case-sensitive.
    known = message.split("choose one of: ")[1].split(", ")
    for name in known:
        spec = architecture(name, in_channels=1, n_classes=7, image_size=(8, 8))
        assert spec[-1][0] == "linear" and spec[-1][2] == 7
    with pytest.raises(InvalidParameterError):
        architecture("NIN", in_channels=3, n_classes=10)


def test_the_mlp_needs_the_image_size_and_takes_every_pixel():
    spec = architecture("mlp", in_channels=3, n_classes=7, image_size=(6, 5))
    assert spec[0] == ("flatten",) and spec[1] == ("linear", 90, 256) and spec[-1] == ("linear", 128, 7)
    assert build_model(spec)(torch.zeros(2, 3, 6, 5)).shape == (2, 7)
    with pytest.raises(InvalidParameterError, match="the mlp architecture needs image_size"):
        architecture("mlp", in_channels=3, n_classes=7)
