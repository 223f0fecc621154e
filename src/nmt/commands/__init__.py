"""Subcommands of the ``nmt`` command line."""
