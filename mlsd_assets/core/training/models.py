"""Model factory: a fast airbench-style net for CPU throughput, and VGG-11 with batch norm for seed parity."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.training.conv import Conv3x3

ARCHITECTURES: tuple[str, ...] = ("airbench", "vgg11")
NUM_CLASSES = 10
# VGG-11 ("A") feature layout; "M" is a 2x2 max-pool. Five pools take 32x32 down to 1x1.
_VGG11_LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class _ConvGroup(nn.Sequential):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early keeps the second conv cheap."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__(
            Conv3x3(c_in, c_out),
            nn.MaxPool2d(2),
            _batch_norm(c_out, bn_momentum),
            nn.GELU(),
            Conv3x3(c_out, c_out),
            _batch_norm(c_out, bn_momentum),
            nn.GELU(),
        )


def _batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """Scale frozen at 1: with a following GELU only the shift matters, and one fewer tensor trains faster."""
    bn = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class AirbenchNet(nn.Module):
    """airbench94-style net: frozen patch-whitening stem, three conv groups, max-pool head, scaled logits."""

    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), bn_momentum: float = 0.4) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.body = nn.Sequential(
            nn.GELU(),
            _ConvGroup(24, widths[0], bn_momentum),
            _ConvGroup(widths[0], widths[1], bn_momentum),
            _ConvGroup(widths[1], widths[2], bn_momentum),
            nn.MaxPool2d(3),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], NUM_CLASSES, bias=False)
        self.logit_scale = 1 / 9
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                _dirac_init(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.whiten(x))) * self.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the eigenbasis of 2x2 patch covariance of normalised train images, +/- pairs."""
        # (N, C, H-1, W-1, kh, kw) -> rows of (C, kh, kw), the conv weight layout
        patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        basis = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
        basis = basis.reshape(12, 3, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([basis, -basis]))
        self.whiten.bias.zero_()


def _dirac_init(conv: nn.Conv2d) -> None:
    """Identity on the first in_channels filters: deep nets start close to a shallow one and train faster."""
    w = conv.weight.data
    n = min(w.shape[0], w.shape[1])
    torch.nn.init.dirac_(w[:n])


class Vgg11(nn.Module):
    """torchvision VGG-11 adapted to 32x32: batch norm after every conv (it does not learn without) and a
    512->10 head instead of the 7x7 ImageNet classifier."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(c_in, int(item), 3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(512, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(architecture: str, widths: tuple[int, int, int] | None = None) -> nn.Module:
    """`widths` (airbench only) sets the conv groups' channels: narrower nets trade accuracy for speed."""
    if architecture == "airbench":
        return AirbenchNet(widths=tuple(widths)) if widths else AirbenchNet()
    if architecture == "vgg11":
        return Vgg11()
    raise ValueError(f"architecture: unknown {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


def forward_flops(architecture: str, widths: tuple[int, int, int] | None = None, size: int = 32) -> float:
    """One image's forward FLOPs (torch's counter): a time budget's first guess at a wider net's price."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(architecture, widths).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


class InferenceModel(nn.Module):
    """What gets served: raw uint8 NHWC pixels in, logits out; scaling, normalisation, layout (and optional
    flip test-time augmentation) live in the graph, so nobody can preprocess wrongly."""

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        std_arr = np.asarray(std, dtype=np.float64)
        scale = 1.0 / (255.0 * std_arr)
        shift = -np.asarray(mean, dtype=np.float64) / std_arr
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.flip_tta = flip_tta

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels_last in memory, since it is a permuted view)."""
        return images.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if not self.flip_tta:
            return self.net(x)
        # The images and their mirrors as one batch: one pass of the net (one ONNX node per layer, bigger GEMMs).
        both = self.net(torch.cat([x, torch.flip(x, dims=[3])]))
        return both.unflatten(0, (2, -1)).mean(0)

    def fused(self) -> InferenceModel:
        """An eval-mode copy with its batch norms folded into the convs (`fold_batch_norms`): what is exported."""
        fused = copy.deepcopy(self).eval()
        fold_batch_norms(fused.net)
        return fused


@torch.no_grad()
def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the conv before it, in place: directly after the conv, or after a
    max-pool when every channel's scale is positive (a per-channel increasing affine map commutes with max).
    The function is unchanged, the served graph loses a node per norm, and a quantized conv keeps its output in
    int8 where a norm in between would need fp32. Norms that cannot be folded are left as they are."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        for i, bn in enumerate(layers):
            if not isinstance(bn, nn.BatchNorm2d) or bn.training or not bn.track_running_stats:
                continue
            j = i - 2 if i >= 2 and isinstance(layers[i - 1], nn.MaxPool2d) else i - 1
            conv = layers[j] if j >= 0 else None
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                continue
            weight = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            scale = weight / torch.sqrt(bn.running_var + bn.eps)
            if j == i - 2 and not bool((scale > 0).all()):
                continue
            folded = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                padding_mode=conv.padding_mode,
            ).to(conv.weight)
            folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            shift = bn.bias if bn.affine else torch.zeros_like(scale)
            folded.bias.copy_((bias - bn.running_mean) * scale + shift)
            seq[j], seq[i] = folded.eval(), nn.Identity()
            layers[j], layers[i] = seq[j], seq[i]
    return net
