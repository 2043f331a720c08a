"""The generic training loop and checkpoints."""
