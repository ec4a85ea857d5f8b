"""Evaluation of the running server and the champion/challenger gate."""
