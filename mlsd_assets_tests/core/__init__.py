"""Tests of the plain-Python core, mirroring mlsd_assets/core."""
