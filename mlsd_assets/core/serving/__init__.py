"""The served graph (export, variants), the inference server and its image."""
