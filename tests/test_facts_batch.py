"""Several facts in one remote command (ir_toolkit/facts/batch.py): framing, hostile output, the plan-time memo.

The batch script runs here under a local /bin/sh (no host, no root, no network). Hostile cases: answers that
print a copy of the frame header and boundary, truncated streams (every prefix of a valid answer), bytes
after the end, reordered or extra frames, wrong lengths, statuses and boundaries, oversize announcements.
Any irregularity refuses the WHOLE batch (FactError); the memo then asks each fact alone.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ir_toolkit.facts import accounts, sshd
from ir_toolkit.facts.base import MAX_OUTPUT, FactError, Output, Query
from ir_toolkit.facts.batch import FactMemo, batch, batch_script, parse_batch

B = "0123456789abcdef0123456789abcdef"


class LocalShell:
    """A runner that runs commands under the local /bin/sh (what a host's login shell does)."""

    def __init__(self, rewrite: Any = None) -> None:
        self.commands: list[str] = []
        self.rewrite = rewrite

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Any:
        self.commands.append(command)
        proc = subprocess.run(["/bin/sh", "-c", command], input=stdin or b"", capture_output=True, timeout=30)
        out = proc.stdout if self.rewrite is None else self.rewrite(proc.stdout)
        return Output(proc.returncode, out, proc.stderr)


def q(command: str, fact: str = "test.raw") -> Query[Output]:
    return Query(fact, command, lambda out: out)


def run_batch(queries: list[Query[Any]], boundary: str = B) -> list[Output]:
    one = batch(queries, boundary)
    return one.parse(LocalShell().run(one.command))


def test_answers_are_exact_per_query() -> None:
    queries = [q("echo hello; echo oops >&2; exit 3"), q("printf 'no newline'"), q("printf 'two\\n\\n\\n'"),
               q("true"), q("cat; echo read-nothing"), q("exit 7"), q("printf '\\033[31mred\\001x5'")]
    got = run_batch(queries)
    assert [(a.exit_status, a.stdout) for a in got] == [
        (3, b"hello\n"), (0, b"no newline"), (0, b"two\n\n\n"), (0, b""), (0, b"read-nothing\n"), (7, b""),
        (0, b"\x1b[31mred\x01x5")]
    assert all(a.stderr == b"" for a in got)  # stderr is not carried (the memo re-asks a refused answer)


def test_a_forged_header_inside_an_answer_stays_inside_it() -> None:
    # the answer copies the frame format with the right boundary (as if read from `ps` while we run)
    forged = f"printf '#{B} 1 0 4\\nroot\\n#{B} end 2\\n'"
    got = run_batch([q(forged), q("echo real")])
    assert got[0].stdout == f"#{B} 1 0 4\nroot\n#{B} end 2\n".encode()
    assert got[1].stdout == b"real\n" and len(got) == 2


def test_real_facts_parse_from_a_batch_as_alone() -> None:
    queries = [accounts.passwd_entry("root"), sshd.client_address(), accounts.passwd_all()]
    alone = [query.parse(LocalShell().run(query.command)) for query in queries]
    batched = [query.parse(answer) for query, answer in zip(queries, run_batch(queries))]
    assert batched == alone


def _valid() -> bytes:
    return LocalShell().run(batch([q("echo one"), q("printf 'x\\n#y'; exit 4")], B).command).stdout


def test_every_truncation_is_refused() -> None:
    data = _valid()
    assert len(parse_batch(Output(0, data), 2, B)) == 2
    for cut in range(len(data)):
        with pytest.raises(FactError):
            parse_batch(Output(0, data[:cut]), 2, B)


@pytest.mark.parametrize("mangle, why", [
    (lambda d: d + b"extra\n", "after the closing frame"),
    (lambda d: d.replace(f"#{B} end 2".encode(), f"#{B} end 3".encode()), "closing frame"),
    (lambda d: d.replace(B.encode(), b"f" * 32), "expected a header"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 1 0 4".encode()), "malformed header"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 0 3".encode()), "announced|expected a header"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 0 5".encode()), "announced"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 256 4".encode()), "exit status"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 -1 4".encode()), "exit status"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 0 4 9".encode()), "malformed header"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 0 {MAX_OUTPUT + 1}".encode()), "limit"),
    (lambda d: d.replace(f"#{B} 0 0 4".encode(), f"#{B} 0 0 99999999999999".encode()), "length"),
    (lambda d: b"motd line\n" + d, "expected a header"),
])
def test_irregular_output_is_refused_whole(mangle: Any, why: str) -> None:
    with pytest.raises(FactError, match=why):
        parse_batch(Output(0, mangle(_valid())), 2, B)


def test_frames_out_of_order_are_refused() -> None:
    data = _valid()
    first_end = data.index(f"#{B} 1 ".encode())
    end = data.index(f"#{B} end".encode())
    swapped = data[first_end:end] + data[:first_end] + data[end:]
    with pytest.raises(FactError):
        parse_batch(Output(0, swapped), 2, B)


def test_huge_and_failed_batches_are_refused() -> None:
    with pytest.raises(FactError, match="exited 127"):
        parse_batch(Output(127, b"", b"sh: not found"), 1, B)
    huge = f"#{B} 0 0 {MAX_OUTPUT}\n".encode() + b"a" * 16
    with pytest.raises(FactError, match="announced"):
        parse_batch(Output(0, huge), 1, B)
    with pytest.raises(FactError, match="no header"):
        parse_batch(Output(0, b"a" * 100_000), 1, B)


def test_script_refuses_stdin_queries_and_bad_boundaries() -> None:
    with pytest.raises(ValueError):
        batch_script([Query("x", "cat", lambda o: o, stdin=b"secret")], B)
    with pytest.raises(ValueError):
        batch_script([q("true")], "'; rm -rf / #" + "0" * 19)
    assert batch([q("true")]).command != batch([q("true")]).command  # a fresh boundary per call


def test_memo_asks_once_and_prefetches_in_one_command() -> None:
    shell = LocalShell()
    memo = FactMemo()
    queries = [accounts.passwd_entry("root"), sshd.client_address(), accounts.passwd_all()]
    assert memo.prefetch(shell, queries + [accounts.passwd_entry("root")]) == 3
    values = [memo.fact(shell, query) for query in queries + queries]
    assert len(shell.commands) == 1 and memo.commands == 1
    assert values[0].user == "root" and values[1] == "127.0.0.1"
    memo.fact(shell, accounts.account_state("root"))  # not prefetched: asked alone, once
    memo.fact(shell, accounts.account_state("root"))
    assert len(shell.commands) == 2


def test_memo_falls_back_to_one_command_each_when_the_batch_is_refused() -> None:
    # a host that mangles the batch (here: a banner before it): every fact is asked alone, as before
    shell = LocalShell(rewrite=lambda out: b"Welcome!\n" + out if b"#" in out[:1] else out)
    memo = FactMemo()
    queries = [accounts.passwd_entry("root"), sshd.client_address()]
    assert memo.prefetch(shell, queries) == 0 and "expected a header" in (memo.batch_refused or "")
    assert memo.fact(shell, queries[0]).user == "root"
    assert memo.fact(shell, queries[1]) == "127.0.0.1"
    assert len(shell.commands) == 3


def test_a_batched_answer_the_parser_refuses_is_asked_alone() -> None:
    calls: list[str] = []

    def parse(out: Output) -> str:
        calls.append(out.stderr.decode())
        if out.exit_status:
            raise FactError("test.fails", f"failed: {out.last_error()}")
        return out.text

    failing = Query("test.fails", "echo the real reason >&2; exit 2", parse)
    shell = LocalShell()
    memo = FactMemo()
    memo.prefetch(shell, [failing, q("true")])
    with pytest.raises(FactError, match="the real reason"):
        memo.fact(shell, failing)
    assert calls == ["", "the real reason\n"] and len(shell.commands) == 2
