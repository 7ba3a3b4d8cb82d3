"""A compact ResNet-style copy descriptor for 64x64 input: GeM pooling, linear projection, L2-normalised output.

Sized for the index's CPU budget (about 30 M multiply-adds per 64-px image, see ``count_macs``): one
stride-2 stem, then three stages at 16, 8 and 4 px, each a stride-2 conv plus one residual basic block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = conv_bn(c, c, relu=False)

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.), p learnt, as in SSCD."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x):
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class CopyDescriptor(nn.Module):
    def __init__(self, widths=(24, 48, 96, 192), dim: int = 128):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = conv_bn(3, w0, stride=2)                      # 64 -> 32
        self.stage1 = nn.Sequential(conv_bn(w0, w1, 2), BasicBlock(w1))  # 32 -> 16
        self.stage2 = nn.Sequential(conv_bn(w1, w2, 2), BasicBlock(w2))  # 16 -> 8
        self.stage3 = nn.Sequential(conv_bn(w2, w3, 2), BasicBlock(w3))  # 8 -> 4
        self.pool = GeM()
        self.proj = nn.Linear(w3, dim)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return F.normalize(self.proj(self.pool(x)), dim=1)


def count_macs(model: nn.Module, size: int = 64) -> int:
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hs:
        h.remove()
    return macs
