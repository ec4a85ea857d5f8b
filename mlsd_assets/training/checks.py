"""The ONNX file must compute what the trained PyTorch model computes, or nothing downstream may use it."""

import dagster as dg
import numpy as np

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.core.training.artifacts import OnnxModel, TrainedModel

PARITY_IMAGES = 256
PARITY_TOLERANCE = 1e-4


def parity_images(split: Cifar10Split, count: int = PARITY_IMAGES) -> tuple[np.ndarray, int]:
    """`count` validation images; topped up from train only when validation is smaller (tiny data)."""
    val, _ = split.arrays("validation")
    images = val[:count]
    if len(images) < count:
        train, _ = split.arrays("train")
        images = np.concatenate([images, train[: count - len(images)]])
    if len(images) == 0:
        raise ValueError("cifar10_split: no validation or train images to compare ONNX against PyTorch")
    return images, min(len(val), count)


@dg.asset_check(
    asset="cifar10_onnx",
    blocking=True,
    additional_ins={"cifar10_model": dg.AssetIn(), "cifar10_split": dg.AssetIn()},
    description=f"ONNX Runtime vs PyTorch (fp32) on {PARITY_IMAGES} validation images: "
    f"max |logit difference| <= {PARITY_TOLERANCE} and the same predicted class for every image",
)
def check_cifar10_onnx_parity(
    cifar10_onnx: OnnxModel, cifar10_model: TrainedModel, cifar10_split: Cifar10Split
) -> dg.AssetCheckResult:
    from mlsd_assets.core.serving.export import parity

    images, from_validation = parity_images(cifar10_split)
    result = parity(cifar10_model.inference_model(), cifar10_onnx.fp32_bytes, images)
    return dg.AssetCheckResult(
        passed=result.passed(PARITY_TOLERANCE),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**result.as_dict(), "validation_images": from_validation, "tolerance": PARITY_TOLERANCE},
    )


@dg.asset_check(
    asset="cifar10_onnx",
    blocking=True,
    additional_ins={"cifar10_split": dg.AssetIn()},
    description="The served graph (the chosen variant) vs the fp32 export on the whole validation split: "
    "its accuracy may be at most the recorded max_accuracy_drop_pt points below the best variant's and the "
    "fp32 graph's; the argmax agreement rate is recorded",
)
def check_cifar10_onnx_served_agreement(cifar10_onnx: OnnxModel, cifar10_split: Cifar10Split) -> dg.AssetCheckResult:
    from mlsd_assets.core.serving.graph import agreement

    images, labels = cifar10_split.arrays("validation")
    if len(images) == 0:
        images, labels = cifar10_split.arrays("train")
    result = agreement(cifar10_onnx.model_bytes, cifar10_onnx.fp32_bytes, cifar10_onnx.metadata, images, labels)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"served_variant": cifar10_onnx.served_variant, **result.as_dict()},
        description=result.summary(),
    )
