"""Telemetry: typed events, the event bus, and the metric catalog."""
