"""Tests of core/serving."""
