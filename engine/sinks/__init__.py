"""Telemetry sinks: backends that subscribe to the event bus."""
