"""Forensic triage: declarative artifacts, collection over SSH, hashed and encrypted evidence bundles.

Modules, in the order data flows:

* :mod:`.schema`     artifact definitions and profiles (YAML under ``artifacts/`` and ``profiles.yml``)
* :mod:`.remote`     the shell commands sent to a host (find/stat, sha256sum, tar)
* :mod:`.transfer`   streaming files off a host (tar over an exec channel; SFTP for comparison)
* :mod:`.collector`  one host, one open connection: volatile commands, then files, hashed twice
* :mod:`.crypto`     streamed chunked AEAD to X25519 recipients
* :mod:`.bundle`     the per-host archive, ``manifest.json``, collection log and seal
* :mod:`.custody`    the chain-of-custody record in the signed audit log
* :mod:`.verify`     re-hash bundles against manifests, seals and the audit log
* :mod:`.status`     "is this host's evidence collected, verified and recorded?" (the destruction gate)
* ``irkit triage`` runs the ``triage.collect`` action (``actions/triage.py``) through the engine

See docs/triage.md.
"""
