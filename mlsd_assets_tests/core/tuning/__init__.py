"""Tests of core/tuning."""
