"""Measuring a served model over HTTP, the promotion gate and the champion registry."""
