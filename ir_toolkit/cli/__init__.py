"""The ``irkit`` command line: one module per command group."""
