"""Tests of the tuning domain (cifar10_tuning, use_tuned)."""
