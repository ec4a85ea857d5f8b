"""A 3x3 convolution whose weight gradient can be a few batched matmuls instead of oneDNN's kernel.

On small feature maps (7x7, 3x3) oneDNN's bf16 weight-gradient kernel ran at 15-70 GFLOP/s on the 2-core
AMX CPU we measured, against ~400 for the forward pass of the same layer: the last conv layers spent more
time on their weight gradient than the rest of the step. With the activations laid out (H, W, N, C), each
of the nine taps' gradient is one batched matmul over rows, with the batch and width merged into the
reduction axis, and no im2col copy. Forward and input gradient stay with oneDNN. Without AMX it loses:
oneDNN's own kernel trained the default net 5-11% faster on a Zen 5 (AVX-512 BF16; bf16 and fp32, also with
oneDNN held to AVX2), so `matmul_weight_grad` is off unless training turns it on (`steps.conv_weight_grad`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# feature maps with at most this many pixels take the matmul path (7x7 = 49 and 3x3 = 9 do; 15x15 does not)
SMALL_MAP_PIXELS = 64


def conv3x3_weight_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(weight) of a stride-1, padding-1, 3x3 conv: (O, C, 3, 3) in float32."""
    n, c, h, w = x.shape
    o = grad_out.shape[1]
    x_hwnc = F.pad(x.permute(2, 3, 0, 1), (0, 0, 0, 0, 1, 1, 1, 1)).contiguous()  # (H+2, W+2, N, C)
    g_t = grad_out.permute(2, 3, 0, 1).reshape(h, w * n, o).transpose(1, 2)  # (H, O, W*N)
    taps = torch.empty(o, 3, 3, c, dtype=torch.float32, device=x.device)
    for kh in range(3):
        for kw in range(3):
            rows = x_hwnc[kh : kh + h, kw : kw + w].reshape(h, w * n, c)  # a view: (W, N) merge
            taps[:, kh, kw] = torch.bmm(g_t, rows).sum(0, dtype=torch.float32)
    return taps.permute(0, 3, 1, 2)


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv3x3_weight_grad(grad_out, x).to(weight.dtype)
            if weight.is_contiguous(memory_format=torch.channels_last):
                grad_w = grad_w.contiguous(memory_format=torch.channels_last)
            else:
                grad_w = grad_w.contiguous()
        return grad_x, grad_w


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), same parameters and state dict; with
    `matmul_weight_grad`, trains small maps through `_Conv3x3` on CPU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        self.matmul_weight_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = self.matmul_weight_grad and x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS
        if not (small and x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _Conv3x3.apply(x, weight)


def use_matmul_weight_grad(net: nn.Module, enabled: bool) -> None:
    """Every Conv3x3 of `net` takes the matmul weight gradient on small maps (`enabled`) or oneDNN's."""
    for module in net.modules():
        if isinstance(module, Conv3x3):
            module.matmul_weight_grad = enabled
