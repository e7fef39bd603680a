"""Turns a run's raw measurements into medians, a markdown table of ratios and a chart.

Ratios are the point: absolute numbers depend on the (shared, noisy) machine, ratios
between targets measured by the same client in the same run much less. Every antiphon
row (``antiphon`` and any ``antiphon+...`` variant) is compared with the websockets
asyncio peer and with the two ceilings, and checked against the targets of issue 9.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

PEER = "ws-asyncio"
ECHO = "trio-ws-echo"
TCP = "tcp-echo"
MARK_START = "<!-- results:start -->"
MARK_END = "<!-- results:end -->"


def _med(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return values[0] if values else None
    return round(statistics.median(nums), 3)


def _merge(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric leaf across repetitions (failed repetitions left out)."""
    reps = [r for r in reps if isinstance(r, dict) and "failed" not in r]
    if not reps:
        return {"failed": True}
    out: dict[str, Any] = {}
    for key in reps[0]:
        values = [r.get(key) for r in reps]
        if isinstance(values[0], dict):
            out[key] = _merge([v for v in values if isinstance(v, dict)])
        else:
            out[key] = _med(values)
    out["reps"] = len(reps)
    return out


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    return {s: {t: _merge(reps) for t, reps in by_target.items()} for s, by_target in doc["raw"].items()}


def _antiphons(summary: dict[str, Any], scenario: str) -> list[str]:
    return [t for t in summary.get(scenario, {}) if t.startswith("antiphon")]


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.2f}x"


def _num(v: Any, digits: int = 0) -> str:
    if v is None or not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.{digits}f}"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def targets_check(summary: dict[str, Any], name: str) -> list[tuple[str, str, str]]:
    """(target of issue 9, measured value, met/missed) for one antiphon row."""
    rows: list[tuple[str, str, str]] = []
    rt = summary.get("rt", {})
    plain = name == "antiphon"
    wants = {"100": 1.2, "1000": 1.0} if plain else {"100": 0.8, "1000": 0.8}
    for n, want in wants.items():
        a, p = _get(rt, name, n, "per_s"), _get(rt, PEER, n, "per_s")
        if a is not None and p is not None:
            rows.append((f"round trips @{n} >= {want}x ws-asyncio gateway", _ratio(a, p), _check(a >= want * p)))
    a99, p99 = _get(rt, name, "1000", "p99_ms"), _get(rt, PEER, "1000", "p99_ms")
    if plain and a99 is not None and p99 is not None:
        rows.append(("p99 @1000 <= ws-asyncio gateway's", f"{a99:.1f} ms vs {p99:.1f} ms", _check(a99 <= p99)))
    st = summary.get("stream", {})
    for n in sorted((k for k in st.get(name, {}) if k.isdigit()), key=int):
        a, p = _get(st, name, n, "chunks_per_s"), _get(st, PEER, n, "chunks_per_s")
        if plain and a is not None and p is not None:
            rows.append((f"streamed chunks/s @{n} >= 2x ws-asyncio", _ratio(a, p), _check(a >= 2 * p)))
        a, p = _get(st, name, n, "ttfc", "p99_ms"), _get(st, PEER, n, "ttfc", "p99_ms")
        if plain and a is not None and p is not None:
            rows.append((f"time to first chunk p99 @{n} <= ws-asyncio's", f"{a:.1f} ms vs {p:.1f} ms", _check(a <= p)))
    idle = summary.get("idle", {}).get(name, {})
    for n, res in sorted(((k, v) for k, v in idle.items() if isinstance(v, dict)), key=lambda kv: int(kv[0])):
        kib = res.get("rss_per_session_kib")
        if kib is not None:
            open_ok = res.get("still_open") == int(n)
            rows.append((f"idle memory @{n} <= 20 KiB/session", f"{kib:.1f} KiB", _check(kib <= 20 and open_ok)))
        cpu = res.get("heartbeat_cpu_pct_at_20s")
        if cpu is not None and int(n) >= 10000:
            rows.append((f"heartbeat CPU @{n} < 1% of a core", f"{cpu:.2f}%", _check(cpu < 1)))
    churn = summary.get("churn", {})
    a, p = _get(churn, name, "handshake_auth", "p99_ms"), _get(churn, PEER, "handshake_auth", "p99_ms")
    busy = _get(churn, name, "busy")
    if a is not None and p is not None:
        rows.append(
            (f"handshake+auth p99 with {busy} busy <= 1.5x ws-asyncio's", f"{a:.1f} ms vs {p:.1f} ms", _check(a <= 1.5 * p))
        )
    slow = summary.get("slow", {}).get(name, {})
    held = slow.get("server_send_buffer_bytes")
    if held is not None:
        # The stalled session may hold send_buffer_max_bytes (1 MiB) and one event; a streaming
        # turn waits at send_buffer_high_bytes (64 KiB), so it holds about that.
        rows.append(
            ("a stalled consumer's buffer <= send_buffer_max_bytes (1 MiB)", f"{held / 1024:.1f} KiB", _check(held <= 2**20 + 2**16))
        )
    before, during = _get(slow, "baseline", "p99_ms"), _get(slow, "stalled", "p99_ms")
    if before is not None and during is not None:
        # "Unchanged within noise": within 1.5x, or 2 ms, of the p99 before the stall.
        ok = during <= max(1.5 * before, before + 2.0)
        rows.append(("others' p99 unchanged while a consumer is stalled", f"{before:.1f} -> {during:.1f} ms", _check(ok)))
    return rows


def cpu_us_per_rt(summary: dict[str, Any], name: str, n: str) -> float | None:
    """Server CPU microseconds per round trip at ``n`` sessions: the gateway's own cost per turn."""
    r = _get(summary, "rt", name, n)
    cpu, per_s = _get(r, "server_cpu"), _get(r, "per_s")
    if not isinstance(cpu, (int, float)) or not isinstance(per_s, (int, float)) or not per_s:
        return None
    return 1e6 * cpu / per_s


def markdown(doc: dict[str, Any], chart_name: str = "latest.png") -> str:
    s = doc["summary"]
    suite = doc["suite"]
    m, v = doc["machine"], doc["versions"]
    lines = [
        f"Suite **{suite['name']}**, run {doc['started']} in {doc['elapsed_s']:.0f} s; "
        f"{'median of ' + str(suite['reps']) if suite['reps'] > 1 else 'one repetition (no median)'} per number.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}; {m['pinning']}.  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    rt = s.get("rt", {})
    if rt:
        names = list(rt)
        levels = sorted({n for t in rt.values() for n in t if n.isdigit()}, key=int)
        lines += ["### 1. Round trips (`message` -> `ack` + `response`; echo targets: one frame back)", ""]
        lines += ["| target | " + " | ".join(f"{n} sess: rt/s, p50 / p99 / p99.9 ms" for n in levels) + " |"]
        lines += ["|---" * (len(levels) + 1) + "|"]
        for t in names:
            cells = []
            for n in levels:
                r = rt[t].get(n, {})
                cells.append(
                    f"{_num(r.get('per_s'))}, {_num(r.get('p50_ms'), 2)} / {_num(r.get('p99_ms'), 2)} / {_num(r.get('p999_ms'), 2)}"
                )
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines += ["", "| ratio (round trips/s) | " + " | ".join(f"{n} sess" for n in levels) + " |"]
        lines += ["|---" * (len(levels) + 1) + "|"]
        for a in _antiphons(s, "rt"):
            for ref in (PEER, "ws-trio", ECHO, TCP):
                if ref in rt:
                    cells = [_ratio(_get(rt, a, n, "per_s"), _get(rt, ref, n, "per_s")) for n in levels]
                    lines.append(f"| {a} / {ref} | " + " | ".join(cells) + " |")
            if a != "antiphon" and "antiphon" in rt:
                cells = [_ratio(_get(rt, a, n, "per_s"), _get(rt, "antiphon", n, "per_s")) for n in levels]
                lines.append(f"| {a} / antiphon | " + " | ".join(cells) + " |")
        if PEER in rt and ECHO in rt:
            cells = [_ratio(_get(rt, ECHO, n, "per_s"), _get(rt, PEER, n, "per_s")) for n in levels]
            lines.append(f"| {ECHO} / {PEER} | " + " | ".join(cells) + " |")
        cpu = [
            f"{t} {_num(100 * (_get(rt, t, levels[-1], 'server_cpu') or 0))}%" for t in names
        ]
        lines += ["", f"Server CPU (share of its core) at {levels[-1]} sessions: " + ", ".join(cpu) + ".", ""]
        per_turn = [(t, [cpu_us_per_rt(s, t, n) for n in levels]) for t in names]
        lines += ["| server CPU per round trip (us) | " + " | ".join(f"{n} sess" for n in levels) + " |"]
        lines += ["|---" * (len(levels) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(_num(c, 1) for c in cs) + " |" for t, cs in per_turn]
        lines.append("")
    st = s.get("stream", {})
    if st:
        levels = sorted({n for t in st.values() for n in t if n.isdigit()}, key=int)
        lines += [f"### 2. Streaming ({suite['stream']['chunks']} chunks per reply)", ""]
        lines += ["| target | sessions | chunks/s | ratio vs ws-asyncio | first chunk p50 / p99 ms |", "|---|---|---|---|---|"]
        for t in st:
            for n in levels:
                r = st[t].get(n, {})
                lines.append(
                    f"| {t} | {n} | {_num(r.get('chunks_per_s'))} | {_ratio(r.get('chunks_per_s'), _get(st, PEER, n, 'chunks_per_s'))} "
                    f"| {_num(_get(r, 'ttfc', 'p50_ms'), 2)} / {_num(_get(r, 'ttfc', 'p99_ms'), 2)} |"
                )
        lines.append("")
    idle = s.get("idle", {})
    if idle:
        ping = suite["idle"]["ping_s"]
        lines += [
            f"### 3. Idle sessions (ping every {ping:g} s during the test; CPU scaled to the default 20 s interval)",
            "",
            "| target | sessions | still open | RSS per session KiB | heartbeat CPU % of a core (at 20 s) |",
            "|---|---|---|---|---|",
        ]
        for t, by_n in idle.items():
            for n, r in by_n.items():
                if not n.isdigit():
                    continue
                lines.append(
                    f"| {t} | {n} | {_num(r.get('still_open'))} | {_num(r.get('rss_per_session_kib'), 1)} "
                    f"| {_num(r.get('heartbeat_cpu_pct_at_20s'), 3)} |"
                )
        lines.append("")
    ch = s.get("churn", {})
    if ch:
        c = suite["churn"]
        lines += [
            f"### 4. Churn ({c['rate']}/s new clients: connect, authenticate, one turn, close; {c['busy']} busy sessions meanwhile)",
            "",
            "| target | connects/s | errors | handshake p99 ms | handshake+auth p50 / p99 ms | whole turn p99 ms | busy rt/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for t, r in ch.items():
            lines.append(
                f"| {t} | {_num(r.get('connects_per_s'), 1)} | {_num(r.get('churn_errors'))} "
                f"| {_num(_get(r, 'handshake', 'p99_ms'), 1)} | {_num(_get(r, 'handshake_auth', 'p50_ms'), 1)} / "
                f"{_num(_get(r, 'handshake_auth', 'p99_ms'), 1)} | {_num(_get(r, 'turn', 'p99_ms'), 1)} "
                f"| {_num(_get(r, 'busy_rt', 'per_s'))} |"
            )
        lines.append("")
    sl = s.get("slow", {})
    if sl:
        c = suite["slow"]
        lines += [
            f"### 5. Slow consumer (one client stops reading an endless stream; {c['busy']} others keep going)",
            "",
            "| target | others p99 before / during ms | others rt/s before / during | server RSS at stall / end MiB "
            "| growth in 2nd half MiB | server's send buffer at the stall's end KiB |",
            "|---|---|---|---|---|---|",
        ]
        for t, r in sl.items():
            lines.append(
                f"| {t} | {_num(_get(r, 'baseline', 'p99_ms'), 2)} / {_num(_get(r, 'stalled', 'p99_ms'), 2)} "
                f"| {_num(_get(r, 'baseline', 'per_s'))} / {_num(_get(r, 'stalled', 'per_s'))} "
                f"| {_num(r.get('rss_at_stall_mib'), 1)} / {_num(r.get('rss_end_stall_mib'), 1)} "
                f"| {_num(r.get('rss_growth_second_half_mib'), 2)} "
                f"| {_num((r.get('server_send_buffer_bytes') or 0) / 1024 if r.get('server_send_buffer_bytes') is not None else None, 1)} |"
            )
        lines.append("")
    for a in sorted({t for sc in s.values() for t in sc if t.startswith("antiphon")}):
        rows = targets_check(s, a)
        if rows:
            lines += [f"### Issue 9 targets: {a}", "", "| target | measured | |", "|---|---|---|"]
            lines += [f"| {what} | {val} | {ok} |" for what, val, ok in rows]
            lines.append("")
    lines += [f"![throughput and p99 by concurrency]({chart_name})", ""]
    return "\n".join(lines)


def chart(doc: dict[str, Any], path: Path) -> None:
    """Round trips/s and p99 latency by concurrency, one line per target (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rt = doc["summary"].get("rt", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t, by_n in rt.items():
        levels = sorted((n for n in by_n if n.isdigit() and isinstance(by_n[n], dict)), key=int)
        xs = [int(n) for n in levels]
        style = "-" if t.startswith("antiphon") else "--" if "echo" in t else "-."
        left.plot(xs, [by_n[n].get("per_s") or 0 for n in levels], style, marker="o", label=t)
        right.plot(xs, [by_n[n].get("p99_ms") or 0 for n in levels], style, marker="o", label=t)
    for ax, title, unit in ((left, "throughput", "round trips / s"), (right, "p99 latency", "ms")):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"antiphon benchmarks ({doc['suite']['name']} suite, {m['cores']} cores, {m['pinning']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(doc: dict[str, Any], md_path: Path, png_path: Path) -> None:
    """Replace the results section of BENCHMARKS.md and the committed chart."""
    chart(doc, png_path)
    body = markdown(doc, chart_name=f"benchmarks/{png_path.name}")
    text = md_path.read_text() if md_path.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    md_path.write_text(pattern.sub(lambda _: f"{MARK_START}\n{body}\n{MARK_END}", text))
