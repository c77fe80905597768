"""Render the review of a case (:func:`ir_toolkit.audit.review.build_review`) as a self-contained
HTML page (inline CSS and an inline SVG timeline; no script, no network fetch: a Content Security
Policy of ``default-src 'none'`` enforces it), as Markdown, or as JSON.

Every string comes from the audit log and much of it from hosts the intruder controls. All of it
goes through :func:`esc` (HTML) or :func:`md` (Markdown): control characters become visible
``\\xNN``, over-long strings are cut, and markup characters are escaped. Nothing is ever inserted
into a tag, attribute or style unescaped; element ids are built from indexes, never from names.
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

from ir_toolkit.audit.review import epoch

MAX_TEXT = 400
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
PHASE_COLOURS = ["#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#bab0ac",
                 "#86bcb6", "#8cd17d"]
MARK_STYLE = {"failed": ("#d62728", "failed"), "timed_out": ("#ff7f0e", "timed out"),
              "refused": ("#7f7f7f", "refused"), "stopped": ("#000000", "stopped")}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """A display string: JSON for non-strings, control and bidi characters made visible, cut at ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)
    text = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    if len(text) > limit:
        text = text[:limit] + "\u2026"
    return text


def esc(value: Any, limit: int = MAX_TEXT) -> str:
    """HTML-escaped display text (quotes too: safe in attributes)."""
    if value is None:
        return ""
    return html.escape(clean(value, limit), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(value: Any, limit: int = MAX_TEXT) -> str:
    """Markdown-escaped display text (no inline HTML, no links, no table breaks)."""
    if value is None:
        return ""
    text = html.escape(clean(value, limit), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def _short(h: Any, n: int = 16) -> str:
    return h[:n] + "\u2026" if isinstance(h, str) and len(h) > n else ("" if h is None else str(h))


def _kind(evidence: dict[str, Any]) -> str:
    """What a bundle is: the volatile snapshot taken before isolation, the full triage, or directory evidence."""
    kind = evidence.get("kind")
    if kind == "volatile":
        return "volatile snapshot"
    return "full triage" if kind == "full" else "directory" if evidence.get("collection_id") is None else "full triage"


def _time(ts: Any) -> str:
    if not isinstance(ts, str):
        return ""
    if not ts.endswith("Z"):
        return ts
    return ts[:-1].replace("T", " ")[:23] + " UTC"


# --------------------------------------------------------------------------- timeline (SVG)


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span / ticks, 1e-3)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def timeline_svg(review: dict[str, Any]) -> str:
    """Phases and waves over time, one row per tenant; failures, time-outs and refusals marked."""
    tenants = review["tenants"]
    phases: list[str] = []
    for t in tenants:
        for seg in t["timeline"]["segments"]:
            if seg["phase"] not in phases:
                phases.append(seg["phase"])
    colour = {p: PHASE_COLOURS[i % len(PHASE_COLOURS)] for i, p in enumerate(phases)}
    times = [epoch(x) for t in tenants for seg in t["timeline"]["segments"] for x in (seg["start"], seg["end"])]
    times += [epoch(m["ts"]) for t in tenants for m in t["timeline"]["marks"]]
    times = [x for x in times if x is not None]
    t0 = min(times) if times else 0.0
    t1 = max(times) if times else 1.0
    span = max(t1 - t0, 1.0)
    left, right, top, lane_h, lane_gap = 150, 20, 40, 26, 6
    width = 1000
    plot = width - left - right

    def x(ts: Any) -> float:
        e = epoch(ts)
        return left + ((e - t0) / span * plot if e is not None else 0.0)

    rows: list[str] = []
    y = top
    for ti, t in enumerate(tenants):
        lanes: list[float] = []   # right edge of the last segment in each lane
        placed = []
        for seg in t["timeline"]["segments"]:
            x0, x1 = x(seg["start"]), max(x(seg["end"]), x(seg["start"]) + 3)
            lane = next((i for i, edge in enumerate(lanes) if x0 >= edge - 0.01), None)
            if lane is None:
                lanes.append(x1)
                lane = len(lanes) - 1
            else:
                lanes[lane] = x1
            placed.append((seg, x0, x1, lane))
        n_lanes = max(1, len(lanes))
        row_h = n_lanes * lane_h + (n_lanes - 1) * 2
        rows.append(f'<g class="tenant-row" data-row="{ti}">'
                    f'<rect x="0" y="{y - lane_gap / 2:.1f}" width="{width}" height="{row_h + lane_gap:.1f}" '
                    f'fill="{"#f6f8fa" if ti % 2 == 0 else "#ffffff"}"/>'
                    f'<text x="8" y="{y + row_h / 2 + 4:.1f}" class="tl-tenant">{esc(t["name"], 22)}</text>')
        for seg, x0, x1, lane in placed:
            ly = y + lane * (lane_h + 2)
            bad = seg["failed"] + seg["timed_out"] + seg["refused"]
            stroke = ' stroke="#d62728" stroke-width="2"' if bad else ""
            label = f'{seg["phase"]}' + (f' w{seg["wave"]}' if seg["wave"] != 1 or _waves(t, seg["phase"]) > 1 else "")
            tip = (f'{t["name"]}: phase {seg["phase"]} wave {seg["wave"]}, {seg["hosts"]} host(s), '
                   f'{_time(seg["start"])} to {_time(seg["end"])}'
                   + (f', {seg["failed"]} failed' if seg["failed"] else "")
                   + (f', {seg["timed_out"]} timed out' if seg["timed_out"] else "")
                   + (f', {seg["refused"]} refused' if seg["refused"] else ""))
            rows.append(f'<g class="segment"><title>{esc(tip)}</title>'
                        f'<rect x="{x0:.1f}" y="{ly:.1f}" width="{x1 - x0:.1f}" height="{lane_h}" rx="3" '
                        f'fill="{colour[seg["phase"]]}"{stroke}/>')
            if x1 - x0 > 7 * len(label) + 6:
                rows.append(f'<text x="{x0 + 4:.1f}" y="{ly + lane_h / 2 + 4:.1f}" class="tl-label">'
                            f'{esc(label, 40)}</text>')
            rows.append("</g>")
        for mark in t["timeline"]["marks"]:
            colour_m, what = MARK_STYLE.get(mark["kind"], ("#d62728", mark["kind"]))
            mx, my = x(mark["ts"]), y + row_h / 2
            tip = f'{what}: {mark.get("host") or t["name"]} ({mark.get("phase")}) {_time(mark["ts"])}: {mark.get("reason")}'
            if mark["kind"] == "timed_out":
                shape = (f'<polygon points="{mx:.1f},{my - 8:.1f} {mx + 7:.1f},{my + 6:.1f} {mx - 7:.1f},{my + 6:.1f}" '
                         f'fill="{colour_m}" stroke="#fff"/>')
            elif mark["kind"] == "failed":
                shape = (f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="7" fill="{colour_m}" stroke="#fff"/>'
                         f'<path d="M{mx - 3:.1f},{my - 3:.1f}L{mx + 3:.1f},{my + 3:.1f}M{mx + 3:.1f},{my - 3:.1f}'
                         f'L{mx - 3:.1f},{my + 3:.1f}" stroke="#fff" stroke-width="2"/>')
            else:
                shape = (f'<rect x="{mx - 5:.1f}" y="{my - 5:.1f}" width="10" height="10" fill="{colour_m}" '
                         f'stroke="#fff" transform="rotate(45 {mx:.1f} {my:.1f})"/>')
            rows.append(f'<g class="mark mark-{esc(mark["kind"], 20)}"><title>{esc(tip)}</title>{shape}</g>')
        rows.append("</g>")
        y += row_h + lane_gap + 4
    axis_y = y + 4
    step = _nice_step(span)
    ticks = []
    k = 0
    while k * step <= span + 1e-9:
        tx = left + k * step / span * plot
        label = f"+{k * step:g}s" if span < 600 else f"+{k * step / 60:g}m"
        ticks.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{axis_y}" class="tl-grid"/>'
                     f'<text x="{tx:.1f}" y="{axis_y + 14}" class="tl-tick" text-anchor="middle">{label}</text>')
        k += 1
    legend = []
    lx = left
    for p in phases:
        legend.append(f'<rect x="{lx}" y="8" width="12" height="12" rx="2" fill="{colour[p]}"/>'
                      f'<text x="{lx + 16}" y="18" class="tl-tick">{esc(p, 20)}</text>')
        lx += 24 + 7 * min(len(clean(p, 20)), 20)
    for kind in ("failed", "timed_out", "refused"):
        c, what = MARK_STYLE[kind]
        legend.append(f'<circle cx="{lx + 6}" cy="14" r="5" fill="{c}"/>'
                      f'<text x="{lx + 16}" y="18" class="tl-tick">{what}</text>')
        lx += 30 + 7 * len(what)
    height = axis_y + 36
    start_label = _time(review["window"]["start"]) if review.get("window") else ""
    return (f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="100%" role="img" aria-label="timeline of the run">'
            f'<style>.tl-tenant{{font:600 13px sans-serif;fill:#222}}.tl-label{{font:11px sans-serif;fill:#fff}}'
            f'.tl-tick{{font:11px sans-serif;fill:#444}}.tl-grid{{stroke:#ddd;stroke-width:1}}</style>'
            + "".join(legend) + "".join(ticks) + "".join(rows)
            + f'<text x="{left}" y="{height - 4}" class="tl-tick">start {esc(start_label)}</text></svg>')


def _waves(tenant: dict[str, Any], phase: str) -> int:
    return sum(1 for s in tenant["timeline"]["segments"] if s["phase"] == phase)


# --------------------------------------------------------------------------- HTML

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2328;margin:0;background:#fff}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.verdict{border-radius:8px;padding:12px 16px;margin:16px 0;border:2px solid}
.verdict.valid{background:#dafbe1;border-color:#1a7f37}.verdict.invalid{background:#ffebe9;border-color:#cf222e}
.verdict .big{font-size:20px;font-weight:700}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 6px;text-align:left;vertical-align:top}td{overflow-wrap:anywhere}
th{background:#f6f8fa}td.mono,span.mono{font-family:ui-monospace,Consolas,monospace;font-size:12px;word-break:break-all}
.bad{color:#cf222e;font-weight:600}.ok{color:#1a7f37}.muted{color:#57606a}
blockquote.statement{margin:8px 0;padding:10px 14px;background:#f6f8fa;border-left:4px solid #4e79a7}
.note{color:#9a6700}
"""


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    if not rows:
        return '<p class="muted">none recorded</p>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(rows_i) + "</tr>" for rows_i in ([f"<td>{c}</td>" if not c.startswith("<td")
                                                                        else c for c in r] for r in rows))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _mono(value: Any, limit: int = MAX_TEXT) -> str:
    return f'<td class="mono">{esc(value, limit)}</td>'


def _verdict_html(review: dict[str, Any]) -> str:
    v = review["verification"]
    cls = "valid" if v["ok"] else "invalid"
    cp = v["checkpoint"]
    parts = [f'<section class="verdict {cls}" id="verdict"><div class="big">Audit log '
             f'{"VALID" if v["ok"] else "INVALID"}</div>']
    if not v["ok"]:
        parts.append(f'<p class="bad">Reason: {esc(v["reason"])}</p>')
        if len(v["problems"]) > 1:
            parts.append("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in v["problems"][:20]) + "</ul>")
    parts.append("<table><tbody>")
    parts.append(f'<tr><th>log origin</th><td class="mono">{esc(v["origin"])}</td></tr>')
    if cp:
        parts.append(f'<tr><th>checkpoint</th><td class="mono">size {esc(cp["size"])}, root {esc(cp["root"])} '
                     f'({"external, anchored" if cp["external"] else "local"}: {esc(cp["file"])})</td></tr>')
        parts.append(f'<tr><th>signed by</th><td class="mono">{esc(cp["signed_by"])}</td></tr>')
    else:
        parts.append('<tr><th>checkpoint</th><td class="bad">no valid signed checkpoint matches the records</td></tr>')
    cos = v["cosigned_by"]
    parts.append("<tr><th>witness cosignatures</th><td>" + (
        "<br>".join(f'<span class="mono">{esc(w["key"])}</span> ({esc(w["fingerprint"])})' for w in cos)
        if cos else '<span class="note">none: the log is not anchored by a witness</span>') + "</td></tr>")
    parts.append("<tr><th>verifier key fingerprint</th><td>" + "<br>".join(
        f'<span class="mono">{esc(k["fingerprint"])}</span> <span class="muted mono">{esc(k["key"])}</span>'
        for k in v["trusted_keys"]) + "</td></tr>")
    parts.append(f'<tr><th>records covered</th><td>signed through seq {esc(v["signed_size"])}'
                 + (f', anchored through seq {esc(v["anchored_size"])}' if v["anchored_size"] else "") + "</td></tr>")
    parts.append("</tbody></table>")
    for note in v["notes"]:
        parts.append(f'<p class="note">{esc(note, 600)}</p>')
    parts.append("</section>")
    return "".join(parts)


def _tenant_html(i: int, t: dict[str, Any]) -> str:
    title = esc(t["name"]) + (f' <span class="muted">({esc(t["display_name"])})</span>' if t.get("display_name") else "")
    out = [f'<section class="tenant" id="tenant-{i}"><h2>Tenant {title}</h2>',
           f'<h3>Statement for the client</h3><blockquote class="statement">{esc(t["statement"], 4000)}</blockquote>']
    out.append("<h3>Hosts</h3>" + _table(
        ["host", "address", "result", "evidence", "isolated", "MSP keys revoked", "rotated", "reimaged"],
        [[f'<td class="host-name">{esc(h["name"])}</td>', _mono(h["address"]),
          f'<td class="{"ok" if h["status"] == "ok" else "bad"}">{esc(h["status"])}</td>',
          esc(h["evidence"]), "yes" if h["isolated"] else "no", "yes" if h["revoked"] else "no",
          esc(", ".join(h["rotated"])), "yes" if h["reimaged"] else "no"] for h in t["hosts"]]))
    out.append("<h3>Evidence bundles and custody</h3>" + _table(
        ["host", "kind", "collected", "by", "bundle SHA-256", "size", "files", "sealed", "custody"],
        [[esc(e["host"]), esc(_kind(e)), esc(_time(e["ts"])), esc(e["actor"]), _mono(e["sha256"]), esc(e["size"]),
          esc(f'{e["files"]["collected"]} collected, {e["files"]["failed"]} failed, {e["files"]["skipped"]} skipped'),
          esc(("encrypted to " + ", ".join(map(str, e["recipients"]))) if e["encrypted"] else "NOT encrypted"),
          esc(f'audit seq {e["seq"]} (leaf {e["leaf"]}); manifest {e["manifest_sha256"]}; ' + "; ".join(
              f'{c["action"]} by {c["actor"]} at {_time(c["ts"])}' for c in e["custody"]), 1200)]
         for e in t["evidence"]]))
    out.append("<h3>Isolated</h3>" + _table(
        ["host", "when", "by", "still allowed", "firewall before (SHA-256)"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["actor"]), esc(", ".join(map(str, e["allowed"]))),
          _mono(e["ruleset_before_sha256"])] for e in t["isolated"]]
        + [[esc(e["host"]), esc(_time(e["ts"])), esc(e["actor"]), "released", ""] for e in t["released"]]))
    out.append("<h3>Revoked</h3>" + _table(
        ["host", "when", "what", "key fingerprints", "removed from"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["what"]), _mono(", ".join(map(str, e["fingerprints"]))),
          esc(", ".join(f'{r.get("file")} ({r.get("user")})' if isinstance(r, dict) else str(r)
                        for r in e["removed"]))] for e in t["revoked"]]))
    out.append("<h3>Rotated credentials</h3>" + _table(
        ["host", "when", "account", "escrow entry", "state"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["account"]), _mono(e["escrow_entry"]), esc(e["state"])]
         for e in t["rotated"]]))
    if t["sessions_ended"]:
        out.append("<h3>Live sessions ended</h3>" + _table(
            ["host", "when", "account", "processes"],
            [[esc(e["host"]), esc(_time(e["ts"])), esc(e["account"]), esc(", ".join(map(str, e["pids"])))]
             for e in t["sessions_ended"]]))
    out.append("<h3>Reimaged</h3>" + _table(
        ["host", "when", "provider", "old host key", "new host key"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["provider"]), _mono(e["old_host_key"]), _mono(e["new_host_key"])]
         for e in t["reimaged"]]))
    out.append("<h3>Directory accounts</h3>" + _table(
        ["host", "when", "action", "account", "outcome"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["action"]), esc(e["account"]), esc(e["outcome"])]
         for e in t["accounts"]]))
    out.append("<h3>Failures</h3>" + _table(
        ["host", "when", "phase", "step", "result", "reason"],
        [[esc(e["host"]), esc(_time(e["ts"])), esc(e["phase"]), esc(e["what"]),
          f'<td class="bad">{esc(e["outcome"])}</td>', esc(e["reason"], 800)] for e in t["failures"]]))
    out.append("<h3>Approvals for this tenant</h3>" + _table(
        ["who", "when", "kind", "plan hash"],
        [[esc(a["approver"]), esc(_time(a["ts"])), esc(a["kind"]), _mono(a["plan"])] for a in t["approvals"]]))
    out.append("</section>")
    return "".join(out)


def render_html(review: dict[str, Any]) -> str:
    scope = review["scope"]
    title = f'Post-incident report: case {esc(review["case"])}' + (f", tenant {esc(scope)}" if scope else "")
    run = review["run"]
    hosts = sum(len(t["hosts"]) for t in review["tenants"])
    body = [f"<h1>{title}</h1>",
            f'<p class="muted">Generated {esc(_time(review["generated"]))} by irkit from the signed audit log '
            f'{esc(review["origin"])}. {len(review["tenants"])} tenant(s), {hosts} host(s) in this report.</p>',
            _verdict_html(review),
            "<h2>Timeline</h2>", timeline_svg(review),
            "<h2>The run</h2>", _table(
                ["started", "ended", "status", "playbook(s)", "plan hash(es)", "responders"],
                [[esc(_time(run["start"])), esc(_time(run["end"])), esc(run["status"]),
                  esc(", ".join(map(str, run["playbooks"]))), _mono(", ".join(map(str, run["plans"]))),
                  esc(", ".join(run["actors"]))]])]
    if run["approvals"]:
        body.append("<h3>Plan approvals (whole case)</h3>" + _table(
            ["who", "when", "kind", "plan hash"],
            [[esc(a["approver"]), esc(_time(a["ts"])), esc(a["kind"]), _mono(a["plan"])] for a in run["approvals"]]))
    if run["stopped"]:
        body.append("<h3>Run stopped</h3>" + _table(
            ["when", "phase", "wave", "reason"],
            [[esc(_time(s["ts"])), esc(s["phase"]), esc(s["wave"]), esc(s.get("reason") or "over the failure limit")]
             for s in run["stopped"]]))
    body.extend(_tenant_html(i, t) for i, t in enumerate(review["tenants"]))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_STYLE}</style></head><body><main>"
            + "".join(body) + "</main></body></html>\n")


# --------------------------------------------------------------------------- Markdown


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_none recorded_\n"
    return ("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
            + "".join("| " + " | ".join(r) + " |\n" for r in rows))


def render_markdown(review: dict[str, Any]) -> str:
    v = review["verification"]
    cp = v["checkpoint"]
    scope = review["scope"]
    out = [f'# Post-incident report: case {md(review["case"])}' + (f", tenant {md(scope)}" if scope else ""), "",
           f'Generated {md(_time(review["generated"]))} from the signed audit log {md(review["origin"])}.', "",
           f'## Verification: **{"VALID" if v["ok"] else "INVALID"}**', ""]
    if not v["ok"]:
        out += [f'Reason: {md(v["reason"])}', ""]
    if cp:
        out += [f'* checkpoint: size {cp["size"]}, root {md(cp["root"])} '
                f'({"external, anchored" if cp["external"] else "local"})',
                f'* signed by: {md(cp["signed_by"])}']
    out.append("* witness cosignatures: " + (", ".join(md(w["key"]) for w in v["cosigned_by"]) or "none"))
    out += [f'* verifier key fingerprint: {md(k["fingerprint"])} ({md(k["key"])})' for k in v["trusted_keys"]]
    out += [f"* {md(n, 600)}" for n in v["notes"]] + [""]
    out += ["## Timeline", ""]
    for t in review["tenants"]:
        out.append(f'* **{md(t["name"])}**: ' + "; ".join(
            f'{md(s["phase"])} wave {s["wave"]} {md(_time(s["start"]))} to {md(_time(s["end"]))} '
            f'({s["hosts"]} hosts' + (f', {s["failed"]} failed' if s["failed"] else "")
            + (f', {s["timed_out"]} timed out' if s["timed_out"] else "") + ")" for s in t["timeline"]["segments"]))
    out.append("")
    for t in review["tenants"]:
        out += [f'## Tenant {md(t["name"])}', "", "> " + md(t["statement"], 4000), "", "### Hosts", "",
                _md_table(["host", "address", "result", "evidence", "isolated", "revoked", "rotated", "reimaged"],
                          [[md(h["name"]), md(h["address"]), md(h["status"]), str(h["evidence"]),
                            "yes" if h["isolated"] else "no", "yes" if h["revoked"] else "no",
                            md(", ".join(h["rotated"])), "yes" if h["reimaged"] else "no"] for h in t["hosts"]]),
                "### Evidence bundles", "",
                _md_table(["host", "kind", "collected", "by", "bundle SHA-256", "audit seq", "encrypted"],
                          [[md(e["host"]), md(_kind(e)), md(_time(e["ts"])), md(e["actor"]), md(e["sha256"]),
                            str(e["seq"]), "yes" if e["encrypted"] else "NO"] for e in t["evidence"]]),
                "### Revoked, rotated, isolated, reimaged", "",
                _md_table(["host", "when", "what"],
                          [[md(e["host"]), md(_time(e["ts"])), "isolated"] for e in t["isolated"]]
                          + [[md(e["host"]), md(_time(e["ts"])), md(e["what"]) + " revoked"] for e in t["revoked"]]
                          + [[md(e["host"]), md(_time(e["ts"])), "rotated " + md(e["account"])] for e in t["rotated"]]
                          + [[md(e["host"]), md(_time(e["ts"])), "reimaged"] for e in t["reimaged"]]),
                "### Directory accounts", "",
                _md_table(["host", "when", "action", "account"],
                          [[md(e["host"]), md(_time(e["ts"])), md(e["action"]), md(e["account"])]
                           for e in t["accounts"]]),
                "### Failures", "",
                _md_table(["host", "when", "phase", "step", "result", "reason"],
                          [[md(e["host"]), md(_time(e["ts"])), md(e["phase"]), md(e["what"]), md(e["outcome"]),
                            md(e["reason"], 800)] for e in t["failures"]]),
                "### Approvals", "",
                _md_table(["who", "when", "kind", "plan hash"],
                          [[md(a["approver"]), md(_time(a["ts"])), md(a["kind"]), md(a["plan"])] for a in
                           t["approvals"] + review["run"]["approvals"]])]
    return "\n".join(out) + "\n"


def render_json(review: dict[str, Any]) -> str:
    return json.dumps(review, indent=2, sort_keys=False, default=str) + "\n"


def render(review: dict[str, Any], fmt: str) -> str:
    if fmt == "html":
        return render_html(review)
    if fmt == "md":
        return render_markdown(review)
    if fmt == "json":
        return render_json(review)
    raise ValueError(f"unknown report format {fmt!r}")
