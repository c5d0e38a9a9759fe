"""Sinks: where change batches become durable."""
