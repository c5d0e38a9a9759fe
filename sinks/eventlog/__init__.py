"""Event-log sinks: Debezium-compatible envelopes in files and brokers."""
