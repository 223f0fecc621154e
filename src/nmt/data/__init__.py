"""Data: the Multi30k source files, parallel-text validation, batching and a synthetic task."""
