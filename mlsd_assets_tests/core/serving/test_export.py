"""ONNX export: checker, serving contract (names, dtypes, dynamic batch, metadata) and the parity test."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlsd_assets.core.serving.export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx, onnx_logits, parity
from mlsd_assets.core.training.models import InferenceModel, build_model
from mlsd_assets_tests.synthetic import make_images

MEAN, STD = (0.45, 0.48, 0.5), (0.25, 0.24, 0.26)


@pytest.fixture(scope="module")
def exported() -> tuple[InferenceModel, bytes]:
    net = build_model("airbench", (8, 16, 16))
    model = InferenceModel(net, MEAN, STD, flip_tta=True)
    images, _ = make_images(64, seed=2)
    net.init_whitening(model.preprocess(__import__("torch").from_numpy(images)))
    model.eval()
    return model, export_onnx(model, {"mlsd.architecture": "airbench"}, logging.getLogger("test"))


def tamper_normalisation(model_bytes: bytes, delta: float = 0.05) -> bytes:
    """Shift the in-graph normalisation constants (the 3-channel initializers), as a wrong export would."""
    proto = onnx.load_model_from_string(model_bytes)
    changed = 0
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.size == 3 and value.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(value + np.float32(delta), init.name))
            changed += 1
    assert changed, "no normalisation constants found in the graph"
    return proto.SerializeToString()


def test_export_passes_checker_and_keeps_the_serving_contract(exported) -> None:  # type: ignore[no-untyped-def]
    _, data = exported
    proto = onnx.load_model_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == OPSET >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [32, 32, 3]
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in proto.metadata_props}["mlsd.architecture"] == "airbench"


def test_export_is_one_pass_with_norms_folded_and_gelu_as_one_op(exported) -> None:  # type: ignore[no-untyped-def]
    """flip-TTA as one batch (one conv per layer, not two), no batch norms, one Gelu node per activation."""
    ops = [n.op_type for n in onnx.load_model_from_string(exported[1]).graph.node]
    assert ops.count("Conv") == 7 and ops.count("Gelu") == 7, ops
    assert not {"BatchNormalization", "Erf"} & set(ops), ops


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(exported, batch: int) -> None:  # type: ignore[no-untyped-def]
    _, data = exported
    images, _ = make_images(batch, seed=9)
    logits = onnx_logits(data, images)
    assert logits.shape == (batch, 10) and logits.dtype == np.float32


def test_parity_with_pytorch(exported) -> None:  # type: ignore[no-untyped-def]
    model, data = exported
    images, _ = make_images(256, seed=4)
    result = parity(model, data, images)
    assert result.images == 256
    assert result.passed(1e-4), result


def test_parity_fails_when_normalisation_is_tampered(exported) -> None:  # type: ignore[no-untyped-def]
    model, data = exported
    images, _ = make_images(256, seed=4)
    result = parity(model, tamper_normalisation(data), images)
    assert not result.passed(1e-4)
    assert result.max_abs_diff > 1e-3


def test_metadata_values_must_be_strings(exported) -> None:  # type: ignore[no-untyped-def]
    model, _ = exported
    with pytest.raises(TypeError, match="mlsd.opset"):
        export_onnx(model, {"mlsd.opset": 18}, logging.getLogger("test"))  # type: ignore[dict-item]
