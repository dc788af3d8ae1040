"""Telemetry sources: each turns bytes into traffic batches (parsers have no I/O)."""
