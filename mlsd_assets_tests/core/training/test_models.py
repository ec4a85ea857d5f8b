"""The model factory and the whole-batch augmentation: shapes, whitening init, crops and alternating flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsd_assets.core.training.loader import Augmentation, TrainBatches
from mlsd_assets.core.training.models import AirbenchNet, InferenceModel, build_model, fold_batch_norms
from mlsd_assets_tests.synthetic import make_images


@pytest.mark.parametrize("architecture", ["airbench", "vgg11"])
def test_inference_model_takes_raw_pixels(architecture: str) -> None:
    model = InferenceModel(build_model(architecture), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    images, _ = make_images(3)
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def _with_trained_statistics(model: InferenceModel, seed: int = 0) -> InferenceModel:
    """Batch-norm statistics and shifts far from their initial values, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=generator)
            m.running_var.uniform_(0.3, 3.0, generator=generator)
            m.bias.data.normal_(0, 0.3, generator=generator)
    return model.eval()


@pytest.mark.parametrize("architecture", ["airbench", "vgg11"])
def test_fused_model_folds_every_norm_and_computes_the_same_logits(architecture: str) -> None:
    widths = (8, 16, 16) if architecture == "airbench" else None
    model = _with_trained_statistics(InferenceModel(build_model(architecture, widths), (0.5,) * 3, (0.25,) * 3))
    fused = model.fused()
    images = torch.from_numpy(make_images(16, seed=7)[0])
    with torch.no_grad():
        assert torch.allclose(fused(images), model(images), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original is left as it was"


def test_a_norm_after_a_pool_with_a_negative_scale_is_not_folded() -> None:
    """max(-x) is not -max(x): folding across the pool would change the function, so the norm stays."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.BatchNorm2d(4))
    net[2].weight.data = torch.tensor([1.0, -1.0, 2.0, 0.5])
    net.eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        fold_batch_norms(net)
        assert isinstance(net[2], torch.nn.BatchNorm2d)
        assert torch.equal(net(x), expected)
        net[2].weight.data.abs_()
        expected = net(x)
        fold_batch_norms(net)
        assert isinstance(net[2], torch.nn.Identity)
        assert torch.allclose(net(x), expected, atol=1e-5)


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror() -> None:
    """One pass of the net over image and mirror together, equal to two separate passes."""
    model = _with_trained_statistics(InferenceModel(build_model("airbench", (8, 16, 16)), (0.5,) * 3, (0.25,) * 3))
    images = torch.from_numpy(make_images(5, seed=8)[0])
    with torch.no_grad():
        plain = model(images)
        mirrored = model(images.flip(2))  # NHWC: axis 2 is the width
        model.flip_tta = True
        assert torch.allclose(model(images), (plain + mirrored) / 2, atol=1e-5)


def test_preprocess_normalises_with_split_statistics() -> None:
    model = InferenceModel(build_model("airbench"), (0.2, 0.4, 0.6), (0.5, 0.25, 0.1))
    pixels = torch.full((1, 32, 32, 3), 51, dtype=torch.uint8)  # 0.2 on the 0..1 scale
    x = model.preprocess(pixels)
    expected = torch.tensor([(0.2 - 0.2) / 0.5, (0.2 - 0.4) / 0.25, (0.2 - 0.6) / 0.1])
    assert x.shape == (1, 3, 32, 32)
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="architecture: unknown 'resnet9'"):
        build_model("resnet9")


def test_whitening_stem_decorrelates_patches() -> None:
    images, _ = make_images(200, seed=3)
    net = AirbenchNet(widths=(8, 16, 16))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    net.init_whitening(x, eps=0.0)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, net.whiten.weight[:12])  # the + half of the +/- pairs
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.05)


def test_crops_are_shifted_windows_of_the_reflect_padded_image() -> None:
    images, labels = make_images(20)
    batches = TrainBatches(images, labels, 20, Augmentation(pad=2, flip=False), seed=1)
    ((batch, batch_labels),) = list(batches.epoch(0))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for crop, label in zip(batch.numpy(), batch_labels.numpy(), strict=True):
        windows = [
            i
            for i in np.flatnonzero(labels == label)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 32, dx : dx + 32], crop)
        ]
        assert windows, "every crop must be a 32x32 window of one padded training image"


def test_flips_alternate_between_epochs_and_replay_per_seed() -> None:
    images, labels = make_images(64)
    aug = Augmentation(pad=0, flip=True, alternate_flip=True)
    batches = TrainBatches(images, labels, 64, aug, seed=5)
    by_image = {}
    for epoch in (0, 1):
        ((batch, _),) = list(batches.epoch(epoch))
        order = torch.randperm(64, generator=torch.Generator().manual_seed(5 * 100_003 + epoch))
        flipped = [not np.array_equal(b, images[i]) for b, i in zip(batch.numpy(), order.numpy(), strict=True)]
        by_image[epoch] = dict(zip(order.tolist(), flipped, strict=True))
    assert 10 < sum(by_image[0].values()) < 54
    assert all(by_image[0][i] != by_image[1][i] for i in range(64))
    again, _ = next(TrainBatches(images, labels, 64, aug, seed=5).epoch(1))
    first, _ = next(batches.epoch(1))
    assert torch.equal(again, first)
