"""What a step runs in (the precision `auto` picks per CPU) and airbench94's test-time augmentation levels."""

from __future__ import annotations

import pytest
import torch

from mlsd_assets.core.training.models import InferenceModel, build_model
from mlsd_assets.core.training.steps import resolve_precision, tta_logits

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "onednn_bf16", "expected"),
    [
        (False, False, True, "fp32"),  # an Ice Lake: oneDNN reports bf16 but emulates it (2.6x slower than fp32)
        (True, False, True, "bf16"),  # a Zen 4/5
        (False, True, True, "bf16"),  # a Sapphire Rapids
        (True, False, False, "fp32"),  # a build without oneDNN's bf16
        (False, False, False, "fp32"),  # a Zen 3 (AVX2)
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_with_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, onednn_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"  # asked: as asked


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
