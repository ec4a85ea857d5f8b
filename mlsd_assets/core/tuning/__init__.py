"""Hyperparameter tuning of the training recipe: an Optuna study over budgeted, pruned trials."""
