"""Resources shared by every domain."""

from pathlib import Path

import dagster as dg


class DataPaths(dg.ConfigurableResource):
    """The project data root and the folders under it that assets and sensors agree on."""

    root: str
    landing: str = ""  # overrides `<root>/landing` (MLSD_LANDING_DIR), e.g. a shared inbox elsewhere

    @property
    def root_dir(self) -> Path:
        return Path(self.root)

    @property
    def downloads_dir(self) -> Path:
        return self.root_dir / "downloads"

    @property
    def landing_dir(self) -> Path:
        """Where new data drops are put by people or upstream systems."""
        return Path(self.landing) if self.landing else self.root_dir / "landing"

    @property
    def drops_dir(self) -> Path:
        """Accepted drops, one entry named after its partition key; `raw_cifar10` reads drop partitions here."""
        return self.root_dir / "drops"

    @property
    def quarantine_dir(self) -> Path:
        return self.root_dir / "quarantine"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root_dir / "checkpoints"

    @property
    def builds_dir(self) -> Path:
        """Docker build contexts and wheelhouses."""
        return self.root_dir / "builds"

    @property
    def reports_dir(self) -> Path:
        return self.root_dir / "reports"
