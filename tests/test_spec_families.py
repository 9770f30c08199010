"""Spec coverage over the architecture families of issue 18 that ``tests/test_spec_coverage.py`` and
``tests/test_spec.py`` do not already trace: per family a tiny configuration of the library's own class (random
weights, small inputs) must trace strictly, pass the invariance check (``trace`` runs :func:`mudsc.check_spec`),
permute >= 95% of its parameter entries, and merge with ``zipit`` into a model that loads strictly into a fresh
instance and computes the same outputs there. ``scripts/coverage_table.py`` measures the full-size models."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc.spec import permuted_share

CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread while these tests run: on a shared 2-core machine two OpenMP threads made the float64
    convolutions of the invariance check 10-100x slower (minutes instead of seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tv_mobilenet_v3() -> nn.Module:
    """torchvision MobileNetV3 with four bottlenecks: ReLU and hardswish, squeeze-excitation, stride 2, residual."""
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

    conf = partial(InvertedResidualConfig, width_mult=1.0)
    setting = [conf(16, 3, 16, 16, True, "RE", 2, 1), conf(16, 3, 48, 24, False, "RE", 2, 1),
               conf(24, 3, 64, 24, True, "HS", 1, 1), conf(24, 5, 96, 32, True, "HS", 2, 1)]
    return MobileNetV3(setting, last_channel=64, num_classes=CLASSES)


def _tv_convnext() -> nn.Module:
    """torchvision ConvNeXt (convnext_tiny's class: LayerNorm2d, layer scale, stochastic depth), two stages."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], stochastic_depth_prob=0.1,
                    num_classes=CLASSES)


def _tv_efficientnet() -> nn.Module:
    """torchvision EfficientNet (efficientnet_b0's class: MBConv with squeeze-excitation, stochastic depth)."""
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    setting = [MBConvConfig(1, 3, 1, 16, 8, 1), MBConvConfig(4, 3, 2, 8, 16, 2), MBConvConfig(4, 5, 2, 16, 24, 1)]
    return EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.1, num_classes=CLASSES, last_channel=64)


def _tv_densenet() -> nn.Module:
    """torchvision DenseNet (densenet121's class) with two dense blocks of two layers and a transition."""
    import torchvision

    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                       num_classes=CLASSES)


def _tv_squeezenet() -> nn.Module:
    import torchvision

    return torchvision.models.squeezenet1_1(weights=None, num_classes=CLASSES)


def _tv_wide_resnet() -> nn.Module:
    """torchvision ResNet with wide_resnet50_2's bottleneck width (``width_per_group=128``), one block a stage."""
    import torchvision
    from torchvision.models.resnet import Bottleneck

    return torchvision.models.ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=128, num_classes=CLASSES)


def _timm(name: str, **kw):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)


def _timm_mixer() -> nn.Module:
    pytest.importorskip("timm")
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=CLASSES, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)


# (id, builder, input shape without the batch[, marks])
FAMILIES = [
    ("tv-convnext", _tv_convnext, (3, 32, 32)),
    ("tv-efficientnet", _tv_efficientnet, (3, 32, 32)),
    ("tv-mobilenet_v3", _tv_mobilenet_v3, (3, 32, 32)),
    ("tv-densenet", _tv_densenet, (3, 32, 32)),
    ("tv-squeezenet1_1", _tv_squeezenet, (3, 32, 32)),
    ("timm-convnext", partial(_timm, "test_convnext"), (3, 32, 32)),
    ("timm-deit-distilled", partial(_timm, "deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2,
                                    embed_dim=48, num_heads=3), (3, 32, 32)),
    ("timm-vit", partial(_timm, "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48,
                         num_heads=3), (3, 32, 32)),
    ("timm-efficientnet", partial(_timm, "test_efficientnet"), (3, 32, 32)),
    ("timm-mobilenetv3", partial(_timm, "mobilenetv3_small_050"), (3, 32, 32)),
    ("timm-pvt_v2", partial(_timm, "pvt_v2_b0", depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
                            num_heads=(1, 2, 2, 4)), (3, 64, 64)),
    ("timm-mixer", _timm_mixer, (3, 32, 32)),
    ("timm-resnet", partial(_timm, "test_resnet"), (3, 32, 32)),
    ("tv-wide_resnet", _tv_wide_resnet, (3, 32, 32)),  # ~23M parameters: ~12 s
]


def _seeded(build, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


@pytest.mark.parametrize("name,build,shape", [pytest.param(*f[:3], id=f[0], marks=f[3:]) for f in FAMILIES])
def test_family_traces_strictly_covers_and_merges(name, build, shape):
    a, b = _seeded(build, 0), _seeded(build, 1)
    gen = torch.Generator().manual_seed(2)
    loader = [torch.randn(4, *shape, generator=gen) for _ in range(2)]
    spec = mudsc.trace(a, loader[0][:2])  # strict; checked by random permutations of every group (float64)
    assert len(spec.groups) > 0
    share = permuted_share(a, spec)
    assert share >= 0.95, f"{name}: {share:.3f} of the parameter entries permuted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 samples for groups of more units: rank-deficient correlations
        result = mudsc.merge([a, b], loader, method="zipit", progress=False)
    assert result.report["coverage"]["strict"] and result.report["coverage"]["groups"] == len(spec.groups)
    assert result.report["coverage"]["permuted_share"] == pytest.approx(share)
    fresh = build()
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        out = result.model.eval()(loader[0])
        assert out.shape == (4, CLASSES) and torch.isfinite(out).all()
        torch.testing.assert_close(fresh.eval()(loader[0]), out)
