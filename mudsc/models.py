"""Small reference architectures for tests, demos and benchmarks (random init, no downloads).

- :func:`resnet20`: CIFAR ResNet-20 (3 stages x 3 BasicBlocks, widths 16w/32w/64w, 1x1 projection shortcuts
  where the width or stride changes), BatchNorm or GroupNorm; inputs ``[B, in_channels, 32, 32]``.
- :func:`vgg11`: VGG-11 (8 convs, optional BatchNorm, global average pooling, one Linear classifier).
- :func:`vit`: a small Vision Transformer (conv patch embedding, CLS token, learned position embedding,
  pre-norm blocks with a fused ``qkv`` Linear and ``scaled_dot_product_attention``, final LayerNorm, CLS head).
- :func:`mlp`: a multilayer perceptron on flattened inputs.

Every model maps ``[B, C, H, W]`` (or ``[B, features]`` for the MLP) to ``[B, num_classes]`` logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm2d(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(groups, channels), channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


class BasicBlock(nn.Module):
    """conv3x3-norm-relu-conv3x3-norm plus (projection) shortcut, then relu."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(norm, cout, groups)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm2d(norm, cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, option B shortcuts), width multiplier ``width``."""

    def __init__(self, width: int = 1, num_classes: int = 10, norm: str = "bn", in_channels: int = 3,
                 gn_groups: int = 8):
        super().__init__()
        w = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = _norm2d(norm, w[0], gn_groups)
        layers, cin = [], w[0]
        for stage, cout in enumerate(w):
            blocks = [BasicBlock(cin if i == 0 else cout, cout, 2 if (stage > 0 and i == 0) else 1, norm, gn_groups)
                      for i in range(3)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(w[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def resnet20(width: int = 1, num_classes: int = 10, norm: str = "bn", in_channels: int = 3) -> ResNet20:
    """CIFAR ResNet-20 with widths 16·width / 32·width / 64·width; ``norm`` "bn" or "gn" (8 groups)."""
    return ResNet20(width, num_classes, norm, in_channels)


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG feature stack (3x3 convs, optional BatchNorm, ReLU, 2x2 max-pools), global pool, Linear head."""

    def __init__(self, config: Sequence, width: int = 1, num_classes: int = 10, in_channels: int = 3,
                 batch_norm: bool = True):
        super().__init__()
        layers, cin = [], in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = max(1, int(v * width // 8))
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg11(width: int = 1, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True) -> VGG:
    """VGG-11 at 1/8 of the ImageNet widths times ``width`` (8·width ... 64·width channels)."""
    return VGG(_VGG11, width, num_classes, in_channels, batch_norm)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Linear (timm layout: rows q | k | v, head-major)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer with CLS token pooling."""

    def __init__(self, depth: int = 6, dim: int = 192, heads: int = 3, patch: int = 4, image_size: int = 32,
                 num_classes: int = 10, in_channels: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ValueError(f"dim {dim} does not split into {heads} heads")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(depth: int = 6, dim: int = 192, heads: int = 3, patch: int = 4, image_size: int = 32, num_classes: int = 10,
        in_channels: int = 3, mlp_ratio: float = 4.0) -> ViT:
    """A small ViT (defaults: 6 blocks, width 192, 3 heads of 64, 4x4 patches of 32x32 images)."""
    return ViT(depth, dim, heads, patch, image_size, num_classes, in_channels, mlp_ratio)


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers of the given hidden widths, then a Linear classifier."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        layers, cin = [], in_features
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU()]
            cin = h
        layers.append(nn.Linear(cin, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


def mlp(in_features: int = 784, hidden: Sequence[int] = (128, 128), num_classes: int = 10, in_channels: int = 1,
        image_size: int = 28) -> MLP:
    """An MLP; ``in_features`` defaults to ``in_channels · image_size²`` of MNIST (1·28·28 = 784)."""
    if in_features is None:
        in_features = in_channels * image_size * image_size
    return MLP(in_features, hidden, num_classes)
