"""The ML core: data containers, model factory, training, export. No Dagster in here."""
