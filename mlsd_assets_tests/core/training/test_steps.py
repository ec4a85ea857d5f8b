"""airbench94's test-time augmentation levels on a small untrained net: what each level averages."""

from __future__ import annotations

import torch

from mlsd_assets.core.training.models import InferenceModel, build_model
from mlsd_assets.core.training.steps import tta_logits


def _model(flip_tta: bool) -> InferenceModel:
    torch.manual_seed(0)
    return InferenceModel(build_model("airbench", (8, 16, 16)), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), flip_tta).eval()


def test_levels_zero_and_one_are_the_plain_and_the_mirrored_served_model() -> None:
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    plain, mirrored = _model(False), _model(True)
    with torch.no_grad():
        assert torch.allclose(tta_logits(plain, images, 0), plain(images), atol=1e-5)
        assert torch.allclose(tta_logits(plain, images, 1), mirrored(images), atol=1e-5)
        level2 = tta_logits(plain, images, 2)
    assert level2.shape == (4, 10) and not torch.allclose(level2, mirrored(images), atol=1e-4)


def test_translation_pads_by_reflection_so_a_flat_image_is_unchanged() -> None:
    model = _model(False)
    flat = torch.full((2, 32, 32, 3), 90, dtype=torch.uint8)  # every shift and mirror of it is itself
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, flat, 2), tta_logits(model, flat, 0), atol=1e-5)
