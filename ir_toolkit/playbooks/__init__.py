"""The shipped playbooks (package data, read with ``importlib.resources``; see ``ir_toolkit/run/shipped.py``).

In a checkout, ``playbooks/`` at the top is a symlink to this directory, so the paths in the docs work.
"""
