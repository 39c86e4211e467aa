"""Base architectures: the batched module computes exactly what E separate models compute."""

import pytest

torch = pytest.importorskip("torch")

from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.training.batched_net import BatchedNet  # noqa: E402
from runoff.training.models import (  # noqa: E402
    activation_floats,
    architecture,
    build_model,
    parameter_count,
)

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
        other.load_model_state(e, net.model_state(e))  # (extract() gives a float32 module)
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
@pytest.mark.parametrize("name,channels,classes", [("nin", 1, 10), ("nin", 3, 43), ("small", 1, 10), ("mlp", 3, 10),
                                                   ("resnet18", 1, 10), ("resnet18", 3, 43)])
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
    listing = "choose one of: nin, small, mlp, resnet18"
    with pytest.raises(InvalidParameterError, match=f"^unknown architecture 'vgg'; {listing}$") as info:
        architecture("vgg", in_channels=3, n_classes=10)
    message = str(info.value)
    assert "'vgg'" in message
    with pytest.raises(InvalidParameterError, match="^unknown architecture 'resnet'; did you mean resnet18\\? "):
        architecture("resnet", in_channels=3, n_classes=10)
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


# ----------------------------------------------------------------- ResNet-18

def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_resnet18_is_the_small_image_resnet18(channels, size):
    spec = architecture("resnet18", in_channels=channels, n_classes=10)
    assert spec[:3] == [("conv", channels, 64, 3, 1, 1), ("bn", 64), ("relu",)]  # no max-pool follows
    assert spec[-2:] == [("gap",), ("linear", 512, 10)] and "maxpool" not in [layer[0] for layer in spec]
    blocks = [i for i, layer in enumerate(spec) if layer[0] == "residual"]
    assert len(blocks) == 8 and all(spec[i + 1] == ("relu",) for i in blocks)
    assert [spec[i][1][0][2:5] for i in blocks] == [(64, 3, 1), (64, 3, 1), (128, 3, 2), (128, 3, 1),
                                                    (256, 3, 2), (256, 3, 1), (512, 3, 2), (512, 3, 1)]
    projections = [spec[i][2] for i in blocks if spec[i][2]]
    assert projections == [(("conv", c // 2, c, 1, 2, 0), ("bn", c)) for c in (128, 256, 512)]
    model = build_model(spec)
    n = sum(p.numel() for p in model.parameters())
    assert parameter_count(spec) == n and (channels != 3 or n == 11_173_962)  # the CIFAR ResNet-18's size
    keys = model.state_dict().keys()
    assert {"3.main.0.weight", "3.main.4.running_var", "7.shortcut.0.weight", "7.shortcut.1.bias"} <= set(keys)
    assert not any(k.startswith("3.shortcut.") for k in keys)  # identity shortcut
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)
    # The branches may come as lists; the batched module keeps tuples (hashable, comparable).
    as_lists = [[layer[0], list(layer[1]), list(layer[2])] if layer[0] == "residual" else layer for layer in spec]
    assert BatchedNet(as_lists, 1).spec == spec and parameter_count(as_lists) == n


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 12)])
def test_resnet18_batched_equals_separate_models(shape):
    c, h, w = shape
    spec = architecture("resnet18", in_channels=c, n_classes=5)
    e_count, b = 3, 3
    net = BatchedNet(spec, e_count).init_(_gens(range(e_count))).double()
    singles = [net.extract(e).double().train() for e in range(e_count)]
    x = torch.randn(b, e_count, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = net(x.reshape(b, e_count * c, h, w), torch.ones(b, e_count))
    out.square().sum().backward()
    for e, model in enumerate(singles):
        ref = model(x[:, e])
        torch.testing.assert_close(out[:, e], ref, rtol=1e-9, atol=1e-10)
        ref.square().sum().backward()
        for p, q in zip(model.parameters(), net.weights, strict=True):
            torch.testing.assert_close(q.grad[e], p.grad, rtol=1e-8, atol=1e-10)
        state = net.model_state(e)
        for key, val in model.state_dict().items():
            if "running" in key:
                torch.testing.assert_close(state[key], val, rtol=1e-9, atol=1e-12)
    # Eval mode (running statistics), and a state dict's round trip through load_model_state.
    net.eval()
    other = BatchedNet(spec, e_count).double().eval()
    x2 = torch.randn(2, e_count, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for e in range(e_count):
        other.load_model_state(e, net.model_state(e))  # (extract() gives a float32 module)
    out = net(x2.reshape(2, e_count * c, h, w))
    assert torch.equal(out, other(x2.reshape(2, e_count * c, h, w)))
    for e, model in enumerate(singles):
        torch.testing.assert_close(out[:, e], model.eval()(x2[:, e]), rtol=1e-9, atol=1e-10)


def test_resnet18_padded_rows_stay_zero_and_change_nothing():
    spec = architecture("resnet18", in_channels=1, n_classes=5)
    mask = torch.ones(4, 2, dtype=torch.float64)
    mask[1, 0] = 0  # a padded row in the middle of model 0's batch
    x = torch.randn(4, 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = (x * mask[:, :, None, None, None]).reshape(4, 2, 8, 8).requires_grad_()
    net = BatchedNet(spec, 2).init_(_gens((5, 6))).double()
    refs = [net.extract(e).double().train() for e in range(2)]
    out = net(x, mask)
    out.square().sum().backward()
    assert torch.equal(out[1, 0], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(x.grad[1, 0], torch.zeros(8, 8, dtype=torch.float64))
    # Model 0 computes what it computes on its three real samples alone: outputs, running stats.
    for e, rows in ((0, [0, 2, 3]), (1, [0, 1, 2, 3])):
        torch.testing.assert_close(out[rows, e], refs[e](x[rows, e:e + 1].detach()), rtol=1e-9, atol=1e-10)
        state = net.model_state(e)
        for key, val in refs[e].state_dict().items():
            if "running" in key:
                torch.testing.assert_close(state[key], val, rtol=1e-9, atol=1e-12)
    # The padded row is exactly zero after every residual block (the sum and its ReLU), too.
    blocks = [i for i, layer in enumerate(spec) if layer[0] == "residual"]
    for i in blocks[:3] + blocks[-1:]:
        trunk = BatchedNet(spec[:i + 2], 2).init_(_gens((5, 6))).double()
        y = trunk(x.detach(), mask).detach()
        assert float(y[1].reshape(2, -1)[0].abs().max()) == 0.0 and float(y[0].abs().max()) > 0


def test_resnet18_rotnet_rule_reaches_every_convolution():
    spec = architecture("resnet18", in_channels=3, n_classes=10)
    net = BatchedNet(spec, 1).init_(_gens((7,)), rule="rotnet")
    state = net.model_state(0)
    for key, (k, cout) in {"0.weight": (3, 64), "7.main.3.weight": (3, 128), "7.shortcut.0.weight": (1, 128),
                           "17.main.0.weight": (3, 512)}.items():
        assert float(state[key].std()) == pytest.approx((2 / (k * k * cout)) ** 0.5, rel=0.05), key
    assert torch.equal(state["7.shortcut.1.weight"], torch.ones(128)) and torch.equal(state["20.bias"], torch.zeros(10))


def _old_activation_floats(spec, h, w):
    # runoff.training.layout.default_chunk_size's estimate before residual layers existed
    per_sample = 0
    for layer in spec:
        if layer[0] == "conv":
            _, _cin, cout, k, s, p = layer
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            per_sample += 4 * cout * h * w
        elif layer[0] in ("maxpool", "avgpool"):
            _, k, s, p = layer
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return per_sample


def test_activation_floats_is_the_old_estimate_without_residual_layers():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None)
    @hypothesis.given(st.sampled_from(["nin", "small", "mlp"]), st.integers(1, 3), st.integers(4, 40),
                      st.integers(4, 40))
    def check(name, c, h, w):
        spec = architecture(name, in_channels=c, n_classes=10, image_size=(h, w))
        assert activation_floats(spec, (h, w)) == _old_activation_floats(spec, h, w)

    check()
    nin = architecture("nin", in_channels=3, n_classes=10)
    assert activation_floats(nin, (32, 32)) == 4 * (32 * 32 * 448 + 16 * 16 * 576 + 8 * 8 * 576)


@pytest.mark.parametrize("size", [8, 12, 32])
def test_activation_floats_walks_the_residual_blocks(size):
    spec = architecture("resnet18", in_channels=3, n_classes=10)
    s, expected = size, 4 * 64 * size * size  # the stem
    for stage, c in enumerate((64, 128, 256, 512)):
        if stage:
            s = (s - 1) // 2 + 1  # stride 2, padding 1: ceil(s / 2)
        # two blocks of two convolutions (4 maps each) and a sum; a projection (4 maps) in stages 2-4
        expected += 2 * (2 * 4 + 1) * c * s * s + (4 * c * s * s if stage else 0)
    assert activation_floats(spec, (size, size)) == expected


def test_the_architecture_catalog_is_in_the_library():
    import pytest

    from runoff.errors import InvalidParameterError
    from runoff.training.models import ARCHITECTURES, MODEL_NOTES, architecture_catalog

    cat = architecture_catalog("28x28x1", 10)
    assert cat["image_shape"] == [28, 28, 1] and list(cat["models"]) == list(ARCHITECTURES)
    assert architecture_catalog((28, 28, 1), 10) == cat
    assert all(row["about"] == MODEL_NOTES[name] and row["parameters"] > 0 for name, row in cat["models"].items())
    # more classes, more parameters in the last layer
    assert architecture_catalog("28x28x1", 20)["models"]["mlp"]["parameters"] > cat["models"]["mlp"]["parameters"]
    for bad in ("3x3", "axbxc", "0x4x1"):
        with pytest.raises(InvalidParameterError, match="^image_shape must be HxWxC"):
            architecture_catalog(bad)
    with pytest.raises(InvalidParameterError, match="^classes must be an integer >= 1"):
        architecture_catalog("8x8x1", 0)
