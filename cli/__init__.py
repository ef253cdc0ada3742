"""The ``saiki`` command line: one entry point that dispatches to every layer."""
