"""The scoring service (HTTP). Built in the scoring-service issue."""
