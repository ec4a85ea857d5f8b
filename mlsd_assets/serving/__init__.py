"""The inference server and its Docker image."""
