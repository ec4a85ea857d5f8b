"""`python -m mlsd_assets`: command-line entry (being built)."""
