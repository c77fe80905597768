"""The application layer: plan -> approve -> execute -> resume (``session``) and generated playbooks
(``generated``). Called by the CLI (which renders its events); imports no click or rich."""
