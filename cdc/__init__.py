"""cdc: a change-data-capture daemon."""

__version__ = "0.1.0"
