"""Assets of this domain (being built)."""
