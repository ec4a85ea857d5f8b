"""The model, its training loop and what training hands downstream."""
