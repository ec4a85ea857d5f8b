"""What one training step is made of (model, optimizers, batches, precision) and evaluation: shared by
`train` and the throughput probe that sizes a time budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsd_assets.core.training.conv import use_matmul_weight_grad
from mlsd_assets.core.training.loader import Augmentation, TrainBatches, eval_batches
from mlsd_assets.core.training.models import AirbenchNet, InferenceModel, build_model
from mlsd_assets.core.training.muon import Muon
from mlsd_assets.core.training.recipes import Precision, TrainConfig, WeightGrad


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """bf16 autocast only where it is fast: CUDA with bf16, or CPUs with native bf16 (AMX, AVX512-BF16); fp32
    else."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast(device) else "fp32"


def bf16_is_fast(device: torch.device) -> bool:
    """CUDA with bf16, or a CPU with bf16 instructions (AVX512-BF16 or AMX) whose kernels oneDNN has. oneDNN's
    own check (PyTorch's, before it sends a bf16 matmul to oneDNN) also says yes on any AVX-512 CPU, where it
    emulates bf16: on an Ice Lake (AVX-512, no AVX512-BF16) a training step ran 2.6x slower than in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = cpu_supports("avx512_bf16") or cpu_supports("amx_tile")
    return native and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_supports(isa: str) -> bool:
    """torch's own check for an instruction set (`avx512_bf16`, `amx_tile`, ...; private, hence getattr: False
    where this torch lacks it); AMX's also asks the kernel for the tile state, which /proc/cpuinfo does not."""
    return bool(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)())


def conv_weight_grad(choice: WeightGrad, precision: str, device: torch.device) -> str:
    """The small maps' weight-gradient path, "matmul" or "onednn": `choice`, or for "auto" the matmuls with bf16
    on an AMX CPU (where oneDNN's kernel was slow) and oneDNN's kernel everywhere else (faster without AMX)."""
    if choice != "auto":
        return choice
    amx = device.type == "cpu" and cpu_supports("amx_tile")
    return "matmul" if amx and precision == "bf16" else "onednn"


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def make_optimizers(net: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD (or Adam) for weights and biases, biases at `bias_lr_scale`; Muon for conv filters when asked.
    Every group remembers its `base_lr`, which the lr schedule scales."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad or n == "whiten.bias"]
    to_muon = config.optimizer == "muon"  # conv filters (4-d) go to Muon, everything else to SGD
    biases = [p for _, p in trainable if p.ndim <= 1]
    filters = [p for _, p in trainable if to_muon and p.ndim == 4]
    weights = [p for _, p in trainable if p.ndim > 1 and not (to_muon and p.ndim == 4)]
    scale = config.bias_lr_scale
    groups = [
        {"params": weights, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": biases, "lr": config.lr * scale, "weight_decay": config.weight_decay / scale},
    ]
    optimizers: list[torch.optim.Optimizer] = []
    kwargs: dict[str, Any] = {"foreach": True}
    if config.optimizer in ("sgd", "muon"):
        optimizers.append(torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.nesterov, **kwargs))
    elif config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        # fused kernels exist on CPU and CUDA for Adam/AdamW: one pass over all parameters per step
        optimizers.append(cls(groups, fused=True))
    else:
        raise ValueError(f"optimizer: unknown {config.optimizer!r}; choose sgd, muon, adam or adamw")
    if filters:
        # Muon's Newton-Schulz in bf16 only where bf16 matmuls are native (muon.py: 13x slower elsewhere)
        ns_dtype = torch.bfloat16 if bf16_is_fast(filters[0].device) else torch.float32
        optimizers.append(Muon(filters, config.muon_lr, config.muon_momentum, config.nesterov, ns_dtype=ns_dtype))
    for opt in optimizers:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """The schedule: the fraction of each group's base lr at `step` of `total`."""
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "linear":
        return 1.0 - step / total
    peak = config.warmup_fraction * total
    return float(np.interp(step, [0, peak, total], [config.lr_start, 1.0, config.lr_end]))


def prepare_model(
    config: TrainConfig,
    train_images: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    precision: str,
) -> InferenceModel:
    """A fresh model as training starts it: whitening fitted on the first train images, the conv weight-gradient
    path chosen for `precision` (the resolved one training runs in), memory layout set."""
    model = InferenceModel(build_model(config.architecture, config.widths), mean, std, flip_tta=config.flip_tta).to(
        device
    )
    if isinstance(model.net, AirbenchNet):
        sample = torch.from_numpy(train_images[: min(len(train_images), 5000)]).to(device)
        model.net.init_whitening(model.preprocess(sample))
    use_matmul_weight_grad(model.net, conv_weight_grad(config.conv_weight_grad, precision, device) == "matmul")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_batches(config: TrainConfig, images: np.ndarray, labels: np.ndarray) -> TrainBatches:
    augmentation = Augmentation(pad=config.crop_pad, flip=config.flip)
    return TrainBatches(images, labels, config.batch_size, augmentation, seed=config.seed, drop_last=True)


def train_step(
    model: InferenceModel,
    optimizers: list[torch.optim.Optimizer],
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch scaled to `size` px; returns the (detached) loss and logits."""
    with autocast(precision, x.device):
        inputs = model.preprocess(x)
        if size != inputs.shape[-1]:  # the whole image smaller (antialiased), in the same memory layout
            inputs = nn.functional.interpolate(inputs, size=(size, size), mode="bilinear", antialias=True)
        logits = model.net(inputs)
        loss = loss_fn(logits.float(), y)
    model.net.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss.detach(), logits.detach()


def evaluate(
    model: InferenceModel,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
    precision: str = "fp32",
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Accuracy and loss of the served model (raw pixels in) on one split."""
    device = next(model.parameters()).device
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=label_smoothing)
    target = torch.from_numpy(labels.astype(np.int64))
    correct, loss, start = 0, 0.0, 0
    with torch.no_grad(), autocast(precision, device):
        for batch in eval_batches(images, batch_size):
            logits = model(batch.to(device)).float().cpu()
            y = target[start : start + len(batch)]
            correct += int((logits.argmax(1) == y).sum())
            loss += float(loss_fn(logits, y))
            start += len(batch)
    n = max(len(labels), 1)
    return {"accuracy": correct / n, "loss": loss / n, "count": float(len(labels))}


def predict_logits(model: InferenceModel, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """fp32 logits of the served model, the reference that the ONNX export is checked against."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(b).float().numpy() for b in eval_batches(images, batch_size)])


def on_device(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def tta_logits(model: InferenceModel, images: torch.Tensor, level: int) -> torch.Tensor:
    """airbench94's test-time augmentation of raw uint8 NHWC images: 0 none; 1 mirror (the mean of the image's
    and its mirror's logits); 2 mirror and translate (half the mirrored logits, half those of the image shifted
    one pixel up-left and one down-right, reflect-padded, each mirrored too): 1, 2 and 6 forward passes."""
    x = model.preprocess(images)
    if level == 0:
        return model.net(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model.net(v) + model.net(torch.flip(v, dims=[3])))

    if level == 1:
        return mirrored(x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirrored(padded[:, :, :32, :32]) + mirrored(padded[:, :, 2:, 2:]))
    return 0.5 * mirrored(x) + 0.5 * shifted
