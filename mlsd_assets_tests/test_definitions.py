"""The code location loads, and the test helpers' data round-trips through the artifact files."""

from pathlib import Path

import dagster as dg

from mlsd_assets.core.data.splits import Cifar10Split
from mlsd_assets.definitions import defs
from mlsd_assets_tests.synthetic import make_split


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert "io_manager" in defs.resources


def test_split_round_trip(tmp_path: Path) -> None:
    split = make_split(40, 10, 10)
    path = tmp_path / "split.npz"
    split.save(path)
    loaded = Cifar10Split.load(path)
    assert loaded.counts() == {"train": 40, "validation": 10, "test": 10}
    assert loaded.content_hash == split.content_hash
    assert (loaded.images == split.images).all()


def test_code_location_loads_without_heavy_libraries() -> None:
    """The webserver, daemon and a light user-code image load the location without the ML stack."""
    import subprocess
    import sys

    heavy = ["torch", "torchvision", "onnx", "onnxruntime", "mlflow", "docker", "matplotlib", "sklearn"]
    code = (
        "import sys, mlsd_assets.definitions as d; d.defs.get_repository_def(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at load time: {out.stdout.strip()}"
