"""Secrets: references (never inline values), redaction, escrow."""
