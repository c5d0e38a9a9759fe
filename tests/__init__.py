"""Fast tests: no servers."""
