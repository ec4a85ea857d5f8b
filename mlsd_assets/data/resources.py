"""Where the official CIFAR-10 batches come from, as a resource so every deployment can point elsewhere."""

import logging
from pathlib import Path

import dagster as dg

from mlsd_assets.core.data.batches import RawBatch
from mlsd_assets.core.data.sources import CIFAR10_MD5, CIFAR10_URL, read_official_batch


class Cifar10Source(dg.ConfigurableResource):
    """`location`: "download" (canonical URL, md5-checked) or a local path (see mlsd_assets.core.data.sources).

    `url`/`md5` exist for mirrors (and tests, which serve a small archive from a file:// URL).
    """

    location: str = "download"
    url: str = CIFAR10_URL
    md5: str = CIFAR10_MD5

    def read(self, partition: str, downloads_dir: Path, log: logging.Logger) -> RawBatch:
        return read_official_batch(self.location, partition, downloads_dir, log, url=self.url, md5=self.md5)
