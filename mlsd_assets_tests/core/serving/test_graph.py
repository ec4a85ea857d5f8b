"""Served-graph variants on a tiny net: building, measuring, the choice rule, metadata and the stored pair."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mlsd_assets.core.serving import graph as sg
from mlsd_assets.core.serving.export import INPUT_NAME, export_onnx
from mlsd_assets.core.serving.server.model import inference_session
from mlsd_assets.core.training.artifacts import REFERENCE_SHA_KEY, OnnxModel
from mlsd_assets.core.training.models import InferenceModel, build_model
from mlsd_assets_tests.core.serving.test_export import tamper_normalisation
from mlsd_assets_tests.synthetic import make_images

log = logging.getLogger("test")
CONTRACT = {"mlsd.architecture": "airbench", "mlsd.registered_model_version": "3"}


@pytest.fixture(scope="module")
def graphs() -> dict[str, object]:
    """fp32 exports without and with flip-TTA of one tiny net, its variants, and images labelled by the net
    itself (so the fp32-with-TTA graph is 100% accurate and any drop is the variant's own)."""
    torch.manual_seed(0)
    net = build_model("airbench", (8, 16, 16))
    model = InferenceModel(net, (0.45, 0.48, 0.5), (0.25, 0.24, 0.26))
    images, classes = make_images(320, seed=5)
    net.init_whitening(model.preprocess(torch.from_numpy(images)))
    _fit(model, images, classes)
    fp32 = export_onnx(model, CONTRACT, log)
    model.flip_tta = True
    fp32_tta = export_onnx(model, CONTRACT, log)
    with torch.no_grad():
        labels = model(torch.from_numpy(images)).argmax(1).numpy()
    train, val = images[:64], images[64:]
    variants = sg.build_variants(fp32, fp32_tta, sg.VARIANTS, train, "minmax", log)
    assert len(np.unique(labels)) >= 5, "the fitted net should predict several classes"
    return {"fp32": fp32, "fp32_tta": fp32_tta, "variants": variants, "val": val, "labels": labels[64:]}


def _fit(model: InferenceModel, images: np.ndarray, labels: np.ndarray, steps: int = 40) -> None:
    """A few Adam steps, so predictions spread over the classes (an untrained net predicts one class)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for step in range(steps):
        batch = slice((step * 64) % len(x), (step * 64) % len(x) + 64)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def figures(name: str, accuracy: float, p50_ms: float) -> sg.VariantFigures:
    return sg.VariantFigures(name, accuracy, 1.0, p50_ms, 2 * p50_ms, 1000 / p50_ms, 100)


def test_every_variant_keeps_the_contract_and_the_preprocessing_in_fp32(graphs) -> None:  # type: ignore[no-untyped-def]
    variants: dict[str, bytes] = graphs["variants"]
    assert list(variants) == list(sg.VARIANTS)
    val = graphs["val"][:5]
    for name, data in variants.items():
        proto = onnx.load_model_from_string(data)
        (inp,) = proto.graph.input
        assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8, name
        assert {n.op_type for n in proto.graph.node if INPUT_NAME in n.input} <= {"Transpose", "Cast"}, name
        assert {p.key: p.value for p in proto.metadata_props}["mlsd.registered_model_version"] == "3", name
        out = inference_session(data, 1).run(None, {INPUT_NAME: val})[0]
        assert out.shape == (5, 10) and out.dtype == np.float32, name
    assert variants["fp32"] == graphs["fp32"] and variants["fp32_tta"] == graphs["fp32_tta"]


def test_int8_quantizes_the_inner_convs_and_keeps_first_and_last_layers_fp32(graphs) -> None:  # type: ignore[no-untyped-def]
    for name in ("int8", "int8_tta"):  # flip-TTA runs the image and its mirror as one batch: one pass either way
        proto = onnx.load_model_from_string(graphs["variants"][name])
        producers = {o: n.op_type for n in proto.graph.node for o in n.output}
        convs = [n for n in proto.graph.node if n.op_type == "Conv"]
        quantized = [c for c in convs if producers.get(c.input[1]) == "DequantizeLinear"]
        # the 6 inner convs quantized; the whitening stem stays fp32, and the head is a Gemm/MatMul
        assert len(convs) == 7 and len(quantized) == 6, name
        kept = set(sg.fp32_boundary_nodes(proto))
        assert len(kept) == 2 and not kept & {c.name for c in quantized}, name
        # the preprocessing (uint8 -> normalised float) feeding the stem is not quantized either
        stems = [c for c in convs if c.name in kept]
        assert stems and all(producers.get(c.input[0]) != "DequantizeLinear" for c in stems), name
        heads = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
        assert heads and all(producers.get(h.input[1]) != "DequantizeLinear" for h in heads), name


def test_int8_logits_track_fp32(graphs) -> None:  # type: ignore[no-untyped-def]
    val = graphs["val"]
    fp32 = sg.logits(inference_session(graphs["fp32"], 1), val)[0]
    int8 = sg.logits(inference_session(graphs["variants"]["int8"], 1), val)[0]
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95
    assert not np.array_equal(fp32, int8)  # really a different graph


def test_measure_scores_accuracy_and_agreement_against_the_reference(graphs) -> None:  # type: ignore[no-untyped-def]
    variants = {k: graphs["variants"][k] for k in ("fp32_tta", "fp32", "ort_tta")}
    measured = sg.measure(variants, graphs["fp32_tta"], graphs["val"], graphs["labels"], 1, 20, log)
    by_name = {f.name: f for f in measured}
    assert by_name["fp32_tta"].accuracy == 1.0 and by_name["fp32_tta"].agreement == 1.0
    assert by_name["ort_tta"].agreement == 1.0
    predicted = sg.logits(inference_session(graphs["fp32"], 1), graphs["val"])[0].argmax(1)
    assert by_name["fp32"].accuracy == pytest.approx((predicted == graphs["labels"]).mean())
    assert by_name["fp32"].agreement == by_name["fp32"].accuracy  # labels are the reference's predictions
    for f in measured:
        assert 0 < f.p50_ms <= f.p99_ms and f.images_per_s > 0 and f.size_bytes > 0


def test_choice_is_the_fastest_within_the_allowed_drop() -> None:
    measured = [
        figures("fp32_tta", 0.880, 2.0),
        figures("fp32", 0.878, 1.0),
        figures("int8_tta", 0.876, 1.2),
        figures("int8", 0.860, 0.5),  # fastest, but 2 pt below the best
    ]
    choice = sg.choose(measured, 0.3, 1, 5000)
    assert (choice.served, choice.best) == ("fp32", "fp32_tta")
    assert choice.accuracy_drop_pt == pytest.approx(0.2)
    assert sg.choose(measured, 2.0, 1, 5000).served == "int8"
    assert sg.choose(measured, 0.0, 1, 5000).served == "fp32_tta"


def test_choice_prefers_the_simpler_graph_on_a_latency_tie() -> None:
    measured = [figures("fp32", 0.88, 1.00), figures("ort", 0.88, 0.99), figures("int8", 0.88, 0.90)]
    assert sg.choose(measured, 0.3, 1, 100).served == "int8"  # 10% faster: not a tie
    assert sg.choose(measured[:2], 0.3, 1, 100).served == "fp32"  # 1% faster: noise, keep the simpler


def test_choice_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_accuracy_drop_pt"):
        sg.choose([figures("fp32", 0.9, 1.0)], -0.1, 1, 10)
    with pytest.raises(ValueError, match="no variants"):
        sg.choose([], 0.3, 1, 10)
    with pytest.raises(ValueError, match="int4"):
        sg.build_variants(b"", b"", ["fp32", "int4"], np.zeros((0, 32, 32, 3), np.uint8), "minmax", log)


def test_calibration_sample_spreads_over_the_train_split() -> None:
    train = np.arange(1000, dtype=np.uint8).reshape(-1, 1)
    assert len(sg.calibration_sample(train, 10)) == 10
    assert len(sg.calibration_sample(train, 5000)) == 1000
    assert len(sg.calibration_sample(train, 0)) == 0
    with pytest.raises(ValueError, match="calibration images"):
        sg.quantize_int8(b"", np.zeros((0, 32, 32, 3), np.uint8), "minmax", log)


@pytest.fixture(scope="module")
def selected(graphs) -> tuple[OnnxModel, sg.Choice]:  # type: ignore[no-untyped-def]
    selection = sg.Selection(variants=("fp32_tta", "fp32", "int8"), calibration_images=64, latency_runs=20)
    return sg.select_served_graph(
        graphs["fp32"],
        graphs["fp32_tta"],
        True,
        CONTRACT,
        graphs["val"][:64],
        graphs["val"],
        graphs["labels"],
        selection,
        log,
    )


def test_served_file_records_the_choice_and_its_reference(selected, graphs) -> None:  # type: ignore[no-untyped-def]
    model, choice = selected
    meta = model.metadata
    assert model.served_variant == choice.served == meta["mlsd.serving.variant"]
    assert meta["mlsd.registered_model_version"] == "3"  # the contract survives every variant
    assert model.fp32_bytes == graphs["fp32_tta"]  # trained with TTA: the reference has it
    assert meta[REFERENCE_SHA_KEY] == hashlib.sha256(graphs["fp32_tta"]).hexdigest()
    recorded = json.loads(meta["mlsd.serving.figures"])
    assert [f["name"] for f in recorded] == ["fp32_tta", "fp32", "int8"]
    assert float(meta["mlsd.serving.max_accuracy_drop_pt"]) == 0.3
    assert choice.table()["served"].count(True) == 1
    assert f"{choice.served} **(served)**" in choice.markdown()


def test_stored_pair_round_trips_and_old_files_still_load(selected, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, _ = selected
    path = tmp_path / "latest.onnx"
    model.save(path)
    loaded = OnnxModel.load(path)
    assert loaded.model_bytes == model.model_bytes and loaded.reference_bytes == model.reference_bytes
    (ref_file,) = tmp_path.glob("latest.reference-*.onnx")
    # a file written before variants existed: no reference, the served file is its own fp32 graph
    old = tmp_path / "old" / "latest.onnx"
    old.parent.mkdir()
    old.write_bytes(model.reference_bytes)
    legacy = OnnxModel.load(old)
    assert legacy.reference_bytes is None and legacy.fp32_bytes == model.reference_bytes
    assert legacy.served_variant == "unrecorded"
    # a reference that does not match the recorded hash is refused, naming the file
    ref_file.write_bytes(b"not the reference")
    with pytest.raises(ValueError, match=ref_file.name):
        OnnxModel.load(path)
    ref_file.unlink()
    with pytest.raises(FileNotFoundError, match=ref_file.name):
        OnnxModel.load(path)


def test_save_replaces_the_previous_reference(selected, graphs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, choice = selected
    path = tmp_path / "latest.onnx"
    model.save(path)
    other = sg.served_model(choice, {choice.served: model.model_bytes}, graphs["fp32"], CONTRACT)
    other.save(path)
    (ref_file,) = tmp_path.glob("latest.reference-*.onnx")
    assert ref_file.read_bytes() == graphs["fp32"] and OnnxModel.load(path).fp32_bytes == graphs["fp32"]
    with pytest.raises(ValueError, match="does not match"):
        OnnxModel(other.model_bytes, other.metadata, reference_bytes=b"x").save(tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_agreement_passes_the_chosen_graph_and_fails_a_degraded_one(selected, graphs) -> None:  # type: ignore[no-untyped-def]
    model, choice = selected
    good = sg.agreement(model.model_bytes, model.fp32_bytes, model.metadata, graphs["val"], graphs["labels"])
    assert good.passed, good.summary()
    assert good.agreement == pytest.approx(choice.served_figures.agreement)
    assert good.fp32_accuracy == 1.0
    worse = tamper_normalisation(model.fp32_bytes, delta=1.0)
    bad = sg.agreement(worse, model.fp32_bytes, model.metadata, graphs["val"], graphs["labels"])
    assert not bad.passed and bad.accuracy_drop_pt > 0.3 and bad.agreement < 1.0
    assert "MORE than" in bad.summary()


def test_asset_config_defaults_match_the_core() -> None:
    from mlsd_assets.training.assets import OnnxConfig

    config = OnnxConfig()
    assert tuple(config.variants) == sg.VARIANTS
    selection = sg.Selection(**config.model_dump() | {"variants": tuple(config.variants)})
    assert selection == sg.Selection()


def test_reduce_range_keeps_int8_weights_to_7_bits(graphs) -> None:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    def weight_span(data: bytes) -> int:
        proto = onnx.load_model_from_string(data)
        ints = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        return max(int(np.abs(w.astype(np.int16)).max()) for w in ints if w.ndim == 4)

    calibration = graphs["val"][:32]
    assert weight_span(sg.quantize_int8(graphs["fp32"], calibration, "minmax", log)) > 64
    assert weight_span(sg.quantize_int8(graphs["fp32"], calibration, "minmax", log, reduce_range=True)) <= 64
