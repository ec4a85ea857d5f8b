"""Hyperparameter tuning as an asset: cifar10_tuning, its MLflow record and the study storage."""
