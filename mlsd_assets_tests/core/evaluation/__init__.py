"""Tests of core/evaluation."""
