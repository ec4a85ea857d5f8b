"""Asset checks of this domain (being built)."""
