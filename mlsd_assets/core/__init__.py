"""The plain-Python core: everything the Dagster shell calls, grouped by subject. No Dagster imported here."""
