"""Playbooks (schema), plans (planner) and their execution (engine)."""
