"""Per-tenant agents: the controller's signed steps run by a Celery worker inside a tenant's network.

``envelope`` (signed documents), ``celeryapp`` (the one app factory), ``store`` (an agent's
idempotency store and message chain), ``agent`` (what an agent does per step), ``dispatch``
(the controller's side: send steps, verify and de-duplicate results, write the one signed log),
``offline`` (the same envelopes through files). See docs/agents.md.
"""
