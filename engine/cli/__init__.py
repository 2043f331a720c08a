"""The command line: the only layer that wires experiments, trainer and sinks."""
