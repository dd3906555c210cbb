"""The model zoo: published parameter names and shapes, the forward/tap contract, the timm
adapter, and an independent functional re-computation of the CIFAR ResNets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import kdbench
from kdbench.models import Backbone, create_model, preact

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "cifar_zoo_state_dicts.json").read_text())
"""For each published mdistiller/RepDistiller CIFAR-100 teacher: every state-dict key and shape,
plus ``__logits__``, the logits shape for a 2×3×32×32 input."""

LOGITS = "__logits__"
MODELS = kdbench.list_models()


def fixture_shapes(name: str) -> dict[str, list[int]]:
    if name not in FIXTURE:
        pytest.skip(f"{name} has no published checkpoint")
    return {k: v for k, v in FIXTURE[name].items() if k != LOGITS}


def random_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, Tensor]:
    """Tensors keyed by the published names, as an independently written model would save them:
    fan-in scaled weights, near-unit BN scales, positive running variances."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) > 1:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def forward_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_every_published_model_is_registered():
    assert sorted(set(FIXTURE) - {LOGITS} - set(MODELS)) == []


def test_unpublished_models_are_still_registered_and_tested():
    # ResNet34 has no published teacher: it is absent from the fixture but, being registered,
    # goes through the forward/backward/tap tests below.
    assert "ResNet34" in MODELS and "ResNet34" not in FIXTURE


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_and_logits_match_published_checkpoint(name):
    shapes = fixture_shapes(name)
    model = create_model(name, num_classes=100).eval()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(shapes)
    assert ours == shapes
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32)).logits
    assert list(logits.shape) == FIXTURE[name][LOGITS]


@pytest.mark.parametrize("name", MODELS)
def test_loads_independent_state_dict_strictly(name):
    state = random_state_dict(fixture_shapes(name))
    model = create_model(name, num_classes=100)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_stage_taps(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    assert isinstance(model, Backbone) and len(model.stages) >= 3
    model.tap(model.stages)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.logits.shape == (2, 10)
    assert list(out.features) == model.stages
    assert all(f.shape[0] == 2 for f in out.features.values())
    assert out.feature_map.shape[:2] == (2, out.embedding.shape[1])
    assert out.head is model.head
    assert torch.allclose(out.head(out.embedding), out.logits)
    (out.logits.square().mean() + sum(f.mean() for f in out.features.values())).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # a later forward returns taps of that forward only
    again = model(torch.randn(3, 3, 16, 16))
    assert all(f.shape[0] == 3 for f in again.features.values())


@pytest.mark.parametrize("name", MODELS)
def test_no_taps_installs_no_hooks(name):
    model = create_model(name, num_classes=10).eval()
    assert model._tap_handles == [] and forward_hooks(model) == 0
    model.tap(model.stages[-1:])
    assert forward_hooks(model) == 1
    model.tap([])
    assert model._tap_handles == [] and forward_hooks(model) == 0
    with torch.no_grad():
        out = model(torch.randn(1, 3, 8, 8))
    assert out.features == {} and out.logits.shape == (1, 10)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_stage_is_refused_with_the_known_stages(name):
    model = create_model(name, num_classes=10)
    with pytest.raises(ValueError, match=f"no stage 'stage99'; it has {', '.join(model.stages)}$"):
        model.tap(["stage99"])


def test_timm_model_gives_logits_embedding_feature_map_and_taps():
    model = create_model("timm:resnet18", num_classes=10)
    assert all(k.startswith("model.") for k in model.state_dict())  # loads timm weights by prefix
    model.tap(["stage3"])
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.logits.shape == (2, 10)
    assert out.embedding.shape == (2, 512)
    assert out.feature_map.shape == (2, 512, 2, 2)
    assert out.features["stage3"].shape == (2, 128, 8, 8)
    torch.testing.assert_close(out.logits, model.model(x))
    out.logits.sum().backward()
    model.tap([])
    assert forward_hooks(model) == 0


# --- an independent re-computation of the CIFAR ResNets from their state dict alone --------


def _bn(x: Tensor, sd: dict[str, Tensor], prefix: str) -> Tensor:
    w, b, m, v = (sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
    return (x - m[:, None, None]) / torch.sqrt(v[:, None, None] + 1e-5) * w[:, None, None] + b[:, None, None]


def _conv(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)


def reference_cifar_resnet(sd: dict[str, Tensor], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """He et al.'s CIFAR ResNet in eval mode, driven by parameter names only: conv1-bn1-relu,
    three stages of basic blocks (the first block of stages 2 and 3 strided, a 1×1 conv-BN
    ``downsample`` shortcut where present), global average pooling, fc. Also each stage's
    pre-activation map, mdistiller's ``preact_feats``: its last block's sum before the ReLU."""
    x = F.relu(_bn(_conv(x, sd["conv1.weight"], 1), sd, "bn1"))
    stages, preacts = [], []
    for stage in (1, 2, 3):
        n_blocks = len({k.split(".")[1] for k in sd if k.startswith(f"layer{stage}.")})
        for i in range(n_blocks):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            out = F.relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride), sd, f"{p}.bn1"))
            out = _bn(_conv(out, sd[f"{p}.conv2.weight"], 1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
            pre = out + x
            x = F.relu(pre)
        stages.append(x)
        preacts.append(pre)
    logits = x.mean(dim=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]
    return logits, stages, preacts


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet8x4", "resnet32x4"])
def test_cifar_resnet_computes_the_published_function(name):
    state = random_state_dict(fixture_shapes(name), seed=1)
    model = create_model(name, num_classes=100).eval()
    model.load_state_dict(state)
    model.tap(model.stages + [preact(s) for s in model.stages])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    logits, stages, preacts = reference_cifar_resnet(state, x)
    assert [s.shape[-1] for s in stages] == [16, 8, 4]
    for stage, ref, ref_pre in zip(model.stages, stages, preacts):
        torch.testing.assert_close(out.features[stage], ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.features[preact(stage)], ref_pre, rtol=1e-4, atol=1e-4)
        assert (ref_pre < 0).any()
    torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-4)


# --- pre-activation maps (mdistiller's preact_feats, which ReviewKD distils to) ----------------

# Models whose stages end with a ReLU module: the pre-activation map is its input.
ENDS_WITH_RELU = [m for m in MODELS if not m.startswith(("wrn_", "MobileNetV2"))]


@pytest.mark.parametrize("name", ENDS_WITH_RELU)
def test_preact_map_is_the_stage_output_before_its_last_relu(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    model.tap([preact(s) for s in model.stages] + model.stages)
    size = 32 if "imagenet_stem" in name else 16
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    for stage in model.stages:
        pre = out.features[preact(stage)]
        assert torch.equal(F.relu(pre), out.features[stage]), stage
        assert (pre < 0).any(), stage  # not the post-activation map (VGG's inplace ReLU is copied)


def test_wrn_preact_map_is_the_next_bn_output_as_in_mdistiller():
    """mdistiller's WRN: f1_pre = block2.layer[0].bn1(f1), f2_pre = block3.layer[0].bn1(f2),
    f3_pre = bn1(f3), the stage outputs being the (unactivated) block sums."""
    torch.manual_seed(0)
    model = create_model("wrn_16_2", num_classes=10).eval()
    model.tap(model.stages + [preact(s) for s in model.stages])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
        bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
        for stage, bn in zip(model.stages, bns):
            torch.testing.assert_close(out.features[preact(stage)], bn(out.features[stage]), rtol=0, atol=0)


def test_mobilenetv2_stages_end_unactivated_so_their_preact_map_is_the_output():
    torch.manual_seed(0)
    model = create_model("MobileNetV2", num_classes=10).eval()
    model.tap(model.stages + [preact(s) for s in model.stages])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    assert all(out.features[preact(s)] is out.features[s] for s in model.stages)


def test_timm_preact_map_is_the_input_of_the_stages_last_activation():
    """timm's ResNet ends each block with ReLU(inplace=True): the map is copied before it runs.
    timm zero-initialises each block's last BN scale, so they are randomised here (a zero
    scale would make the pre-activation map the non-negative shortcut)."""
    torch.manual_seed(0)
    model = create_model("timm:resnet18", num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_()
    model.tap(model.stages + [preact(s) for s in model.stages])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    for stage in model.stages:
        pre = out.features[preact(stage)]
        assert torch.equal(F.relu(pre), out.features[stage]) and (pre < 0).any(), stage
    model.tap([])
    assert forward_hooks(model) == 0 and sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


class _Toy(Backbone):
    """stage1 ends with a convolution after its ReLU; stage2 has no activation at all."""

    stage_names = ("one", "two")

    def __init__(self) -> None:
        super().__init__()
        self.one = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
        self.two = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(4, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.two(self.one(x))

    @property
    def head(self) -> torch.nn.Module:
        return self.fc


def test_a_stage_not_ending_with_an_activation_has_no_preact_map():
    model = _Toy()
    with pytest.raises(ValueError, match=r"stage2 holds no activation module.*tap 'stage2' instead"):
        model.tap([preact("stage2")])
    model.tap([preact("stage1")])
    with pytest.raises(ValueError, match=r"stage1 does not end with its last activation module \(one\.1\)"):
        model(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("name", [*MODELS, "timm:resnet18"])
def test_stacked_forward_equals_separate_forwards(name):
    """Two models as one vmapped network: the separate forwards' outputs, gradients and
    BatchNorm statistics, up to rounding (in float64, where BatchNorm over a small batch
    does not amplify it past a tight tolerance)."""
    from kdbench.models.stacked import StackedForward

    torch.manual_seed(0)
    separate = [create_model(name, num_classes=10).double().train() for _ in range(2)]
    stacked = [create_model(name, num_classes=10).double().train() for _ in range(2)]
    for a, b in zip(separate, stacked):
        b.load_state_dict(a.state_dict())
        a.tap(a.stages)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    expected = [m(x) for m in separate]
    got = StackedForward(name, 10, separate[0].stages)(stacked, x)

    def close(a: Tensor, b: Tensor) -> bool:
        return torch.allclose(a, b, rtol=1e-9, atol=1e-10)

    for e, g, model in zip(expected, got, stacked):
        assert close(e.logits, g.logits) and close(e.embedding, g.embedding) and close(e.feature_map, g.feature_map)
        assert e.features.keys() == g.features.keys() and all(close(e.features[k], g.features[k]) for k in e.features)
        assert g.head is model.head
    for outputs in (expected, got):
        sum(o.logits.square().mean() + o.features[o_stage].mean() for o in outputs for o_stage in o.features).backward()
    for a, b in zip(separate, stacked):
        for (key, p), q in zip(a.named_parameters(), b.parameters()):
            assert q.grad is not None and close(p.grad, q.grad), key
        for (key, s), t in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(s, t) if key.endswith("num_batches_tracked") else close(s, t), key
