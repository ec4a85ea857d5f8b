"""Conv3x3: the matmul weight gradient equals oneDNN's, in fp32 and under bf16 autocast, on both layouts; which
path training takes on which CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsd_assets.core.training.conv import Conv3x3
from mlsd_assets.core.training.recipes import recipe_config
from mlsd_assets.core.training.steps import conv_weight_grad, prepare_model


def _grads(conv: nn.Conv2d, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach().float(), x.grad.float(), conv.weight.grad.float()


@pytest.mark.parametrize("size", [3, 7])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_nn_conv2d(size: int, autocast: bool, channels_last: bool) -> None:
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    conv = Conv3x3(6, 10)
    conv.load_state_dict(reference.state_dict())
    conv.matmul_weight_grad = True
    x = torch.randn(5, 6, size, size)
    if channels_last:
        reference, conv = reference.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    tol = 3e-2 if autocast else 1e-4
    for mine, ref in zip(_grads(conv, x, autocast), _grads(reference, x, autocast), strict=True):
        assert torch.allclose(mine, ref, rtol=tol, atol=tol * ref.abs().max().item())
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.shape == (10, 6, 3, 3)


def test_large_maps_and_inference_take_the_plain_path() -> None:
    conv = Conv3x3(2, 2)
    conv.matmul_weight_grad = True
    with torch.no_grad():
        y = conv(torch.randn(1, 2, 16, 16))
    assert y.grad_fn is None
    y = conv(torch.randn(1, 2, 16, 16))
    assert "Convolution" in type(y.grad_fn).__name__
    y = conv(torch.randn(1, 2, 7, 7))
    assert type(y.grad_fn).__name__ == "_Conv3x3Backward"  # the custom autograd function

    conv.matmul_weight_grad = False
    y = conv(torch.randn(1, 2, 7, 7))
    assert "Convolution" in type(y.grad_fn).__name__  # off: oneDNN's weight gradient on small maps too


@pytest.mark.parametrize(
    ("amx", "precision", "expected"),
    [(True, "bf16", "matmul"), (True, "fp32", "onednn"), (False, "bf16", "onednn"), (False, "fp32", "onednn")],
)
def test_auto_takes_the_matmul_path_only_with_bf16_on_amx(
    monkeypatch: pytest.MonkeyPatch, amx: bool, precision: str, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert conv_weight_grad("auto", precision, torch.device("cpu")) == expected
    assert conv_weight_grad("matmul", precision, torch.device("cpu")) == "matmul"  # an explicit choice stands
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8).numpy()
    config = recipe_config(widths=(4, 8, 8), precision=precision)
    model = prepare_model(config, images, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), precision)
    convs = [m for m in model.net.modules() if isinstance(m, Conv3x3)]
    assert len(convs) == 6 and {c.matmul_weight_grad for c in convs} == {expected == "matmul"}
