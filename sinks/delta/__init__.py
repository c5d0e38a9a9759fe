"""Delta Lake sink: changelog and mirror tables (docs/delta.md)."""
