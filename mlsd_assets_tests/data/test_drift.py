"""check_raw_cifar10_drift: a shifted drop warns with its figures, a similar one passes, nothing blocks."""

import dagster as dg
import numpy as np
import pytest

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.data.assets import raw_cifar10
from mlsd_assets.data.checks import check_raw_cifar10_drift
from mlsd_assets.io_manager import ArtifactIOManager
from mlsd_assets.resources import Cifar10Source, DataPaths
from mlsd_assets_tests.cifar_files import write_pickle_batch
from mlsd_assets_tests.synthetic import make_images, make_split


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dg.AssetCheckEvaluation]:
    """Materialize two drop partitions with the check, against a split of the synthetic training data."""
    root = tmp_path_factory.mktemp("drift")
    io_manager = ArtifactIOManager(root=str(root / "artifacts"))
    make_split(400, 50, 50).save(io_manager.path_for(dg.AssetKey("cifar10_split"), None, Cifar10Split.suffix))
    paths = DataPaths(root=str(root / "data"))
    similar_images, similar_labels = make_images(200, seed=11)
    shifted_images, shifted_labels = make_images(200, seed=12)
    shifted_images = np.clip(shifted_images.astype(np.int16) + 50, 0, 255).astype(np.uint8)  # overexposed
    shifted_labels = np.where(shifted_labels < 5, 3, shifted_labels)  # half the drop is "cat"
    write_pickle_batch(paths.drops_dir / "similar", similar_images, similar_labels, "similar")
    write_pickle_batch(paths.drops_dir / "shifted", shifted_images, shifted_labels, "shifted")
    resources = {
        "paths": paths,
        "io_manager": io_manager,
        "cifar10_source": Cifar10Source(location=str(root / "unused")),
    }
    out = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("cifar10_batches", ["similar", "shifted"])
        for key in ("similar", "shifted"):
            result = dg.materialize(
                [raw_cifar10, check_raw_cifar10_drift],
                partition_key=key,
                instance=instance,
                resources=resources,
            )
            assert result.success, f"a drift warning must not fail the run ({key})"
            [out[key]] = result.get_asset_check_evaluations()
    return out


def test_similar_partition_passes(checked: dict[str, dg.AssetCheckEvaluation]) -> None:
    ev = checked["similar"]
    assert ev.passed, ev.description
    assert ev.metadata["label_tv"].value < 0.1
    assert abs(ev.metadata["red_mean_shift"].value) < 0.05
    assert "cifar10_split train rows" in ev.metadata["reference"].value


def test_shifted_partition_warns_with_figures(checked: dict[str, dg.AssetCheckEvaluation]) -> None:
    ev = checked["shifted"]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    assert ev.metadata["label_tv"].value > 0.3 and ev.metadata["label_p_value"].value < 0.01
    for channel in ("red", "green", "blue"):
        assert ev.metadata[f"{channel}_mean_shift"].value > 0.1
    assert "label distribution" in ev.description and "mean shifted" in ev.description
