"""Models. Models never import sinks, the trainer or the CLI."""
