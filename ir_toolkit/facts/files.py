"""Whole files read from the host in one round trip (base64 framed, so any byte survives the channel).

The framing is ``INDEX BASE64`` per regular file that exists; the parser accepts only indexes of
paths it asked for, each at most once, and valid base64 — anything else is a lie and fails closed.
"""

from __future__ import annotations

import base64
import binascii
import shlex

from ir_toolkit.facts.base import MAX_OUTPUT, FactError, Output, Query, lines_of


def read_files(paths: list[str]) -> Query[dict[str, str]]:
    """Contents (UTF-8, undecodable bytes replaced) of those of ``paths`` that are regular files."""
    fact = "files.read"
    script = "i=0\nfor f in " + " ".join(shlex.quote(p) for p in paths) + "; do\n" \
        '  if [ -f "$f" ]; then printf "%s " "$i"; base64 -w0 < "$f"; echo; fi\n  i=$((i+1))\ndone\n'

    def parse(out: Output) -> dict[str, str]:
        if not out.ok:
            raise FactError(fact, f"reading {len(paths)} file(s) failed: {out.last_error()}")
        found: dict[str, str] = {}
        answered: set[int] = set()
        for n, line in enumerate(lines_of(fact, out.text, max_lines=len(paths) + 1, max_line=MAX_OUTPUT), 1):
            if not line:
                continue
            index, _, data = line.partition(" ")
            if not index.isascii() or not index.isdigit() or int(index) >= len(paths):
                raise FactError(fact, f"line {n}: the host answered for a file it was not asked about")
            path = paths[int(index)]
            if int(index) in answered:
                raise FactError(fact, f"line {n}: two answers for {path}")
            answered.add(int(index))
            try:
                raw = base64.b64decode(data, validate=True) if data else b""
            except (binascii.Error, ValueError):
                raise FactError(fact, f"line {n}: the content of {path} is not valid base64") from None
            found[path] = raw.decode("utf-8", "replace")
        return found

    return Query(fact, script, parse)
