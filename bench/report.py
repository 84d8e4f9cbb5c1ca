"""Turning the results into the targets verdict and a markdown report.

Kept apart from the measuring code so that the numbers in the JSON are the
only input: the same functions can re-render an old results.json
(`python bench/report.py results.json`).  Every target is evaluated against a
floor or a rival measured in the same run, and a target that could not be
evaluated (contestant skipped, metric not run) says so instead of passing.
"""

import json
import sys

REAPERS = (("reaper-cgroup", "cgroup"), ("reaper-pgroup", "pgroup"))
ROW_ORDER = ("bare", "reaper-cgroup", "reaper-pgroup", "tini", "dumb-init", "catatonit", "timeout",
             "py-killpg", "psutil", "psutil-subreaper")


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def targets(doc):
    m = doc.get("metrics", {})
    out = []

    def add(metric, goal, who, measured, met, detail=""):
        out.append({"metric": metric, "target": goal, "contestant": who, "measured": measured,
                    "met": met, "detail": detail})

    su = m.get("startup")
    if su:
        for key, mode in REAPERS:
            c = su["commands"].get(key)
            x = c and c.get("x_python")
            add("start-up", "reaper exec -- true <= 1.3x python -c pass", key,
                None if x is None else f"{x:.2f}x", None if x is None else x <= 1.3,
                "" if not c else f"{c['median']:.1f} ms vs {su['commands']['python']['median']:.1f} ms")
    idle = m.get("idle")
    if idle:
        tini = _get(idle, "members", "tini", "wakeups_per_s")
        for key, mode in REAPERS:
            w = _get(idle, "members", key, "wakeups_per_s")
            add("idle", "0 wake-ups/s while supervising sleep", key,
                None if w is None else f"{w:.2f}/s", None if w is None else w == 0,
                "" if tini is None else f"tini: {tini:.2f}/s")
        for key, mode in REAPERS:
            x = _get(idle, "members", key, "rss_x_python_I_S")
            kib = _get(idle, "members", key, "vmhwm_kib")
            floor = _get(idle, "members", "python-I-S", "vmhwm_kib")
            add("rss", "peak RSS <= 1.2x idle python -I -S", key,
                None if x is None else f"{x:.2f}x", None if x is None else x <= 1.2,
                "" if kib is None or floor is None else f"{kib / 1024:.1f} MiB vs {floor / 1024:.1f} MiB")
    td = m.get("teardown")
    if td:
        grace_ms = td["grace_s"] * 1000
        for name, sc in td["scenarios"].items():
            n, variant = sc["n"], sc["variant"]
            for key, mode in REAPERS:
                c = sc["contestants"].get(key)
                if c is None:
                    continue
                left = c["survivors_max"]
                add("teardown", f"zero survivors, N={n} ({variant})", key,
                    "error" if left is None else f"{left} left", None if left is None else left == 0,
                    "; ".join(c.get("errors", []))[:200])
                # Issue 7: the fallback's sweep at 10,000 processes within 1.5x.
                limit = 1.5 if key == "reaper-pgroup" and n >= 10000 else 1.3
                if variant == "honour":
                    x = c["x_floor"]
                    met = None if x is None else (x <= limit and c["empty_ms"] < grace_ms)
                    add("teardown", f"all honour TERM, N={n}: <= {limit}x cgroup.kill floor, no grace wait",
                        key, None if x is None else f"{x:.2f}x", met,
                        "" if x is None else f"{c['empty_ms']:.0f} ms vs floor {sc['floor_ms']:.0f} ms")
                else:
                    x = c["beyond_grace_x_floor"]
                    add("teardown", f"TERM-ignorers, N={n}: <= grace + {limit}x floor", key,
                        None if x is None else f"grace + {x:.2f}x", None if x is None else x <= limit,
                        "" if x is None else f"{c['empty_ms']:.0f} ms, grace {grace_ms:.0f} ms, "
                        f"floor {sc['floor_ms']:.0f} ms")
    orph = m.get("orphans")
    if orph:
        tini_z = _get(orph, "contestants", "tini", "peak_zombies")
        for key, mode in REAPERS:
            c = orph["contestants"].get(key)
            if c is None:
                continue
            x = c["x_bare"]
            add("orphans", f"{orph['count']} orphans: wall <= 1.05x bare", key,
                None if x is None else f"{x:.3f}x", None if x is None else x <= 1.05)
            # The kernel re-parents a whole batch of orphans at once (when their
            # parent exits), so any subreaper may hold one batch for an instant:
            # peaks within one batch of each other count as equal.
            z, batch = c["peak_zombies"], orph.get("batch", 0)
            add("orphans", f"peak zombies <= tini's (within one batch of {batch})", key,
                None if z is None else str(z),
                None if z is None or tini_z is None else z <= tini_z + batch,
                "" if tini_z is None else f"tini: {tini_z}")
    sig = m.get("signal")
    if sig:
        for key, mode in REAPERS:
            c = sig["contestants"].get(key)
            x = c and c.get("x_tini")
            add("signal", "USR1 forwarding latency <= 2x tini", key,
                None if x is None else f"{x:.2f}x", None if x is None else x <= 2,
                "" if not c or c["median"] is None else
                f"{c['median']:.0f} us vs tini {_get(sig, 'contestants', 'tini', 'median') or 0:.0f} us")
    if m.get("api"):
        import apibench
        apibench.targets(m["api"], add)
    import jobs
    jobs.targets(m, add)
    return out


# -- markdown -------------------------------------------------------------------------

def _f(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def _teardown_cell(c, variant, grace_ms):
    if c is None:
        return "—"
    if c["all_empty"]:
        if variant == "ignore" and c["beyond_grace_x_floor"] is not None:
            return f"{c['empty_ms']:.0f} ms (g+{c['beyond_grace_x_floor']:.2f}×)"
        return f"{c['empty_ms']:.0f} ms ({_f(c['x_floor'], '.2f', '×')})"
    if c.get("errors"):
        return f"error ({len(c['errors'])} trial(s))"
    hung = any(t.get("launcher_hung") for t in c["trials"])
    return f"**{c['survivors_max']} left**" + (" (hung)" if hung else "")


def markdown(doc):
    m = doc.get("metrics", {})
    contestants = doc.get("contestants", {})
    keys = [k for k in ROW_ORDER if k in contestants] + [k for k in contestants if k not in ROW_ORDER]
    su, idle, td, orph, sig = (m.get(k) for k in ("startup", "idle", "teardown", "orphans", "signal"))
    lines = []
    mach = doc.get("machine", {})
    lines.append(f"Machine: {mach.get('cpu_model', '?')} × {mach.get('cpus')}, {mach.get('kernel', '?')}, "
                 f"Python {_get(mach, 'tools', 'python')}, {mach.get('date_utc')}")
    lines.append("")
    # The main table shows the largest N that every contestant ran.
    big = max((sc["n"] for sc in td["scenarios"].values()
               if set(contestants) <= set(sc["contestants"])),
              default=max(sc["n"] for sc in td["scenarios"].values())) if td else None
    head = ["contestant"]
    if su:
        head.append("start-up ms (×`python -c pass`)")
    if idle:
        head += ["peak RSS MiB (×`python -I -S`)", "idle wake-ups/s", "idle CPU µs/s"]
    if td:
        head += [f"teardown N={big}, all honour TERM", f"teardown N={big}, TERM-ignorers"]
    if orph:
        head += [f"{orph['count']} orphans ×bare", "peak zombies", "orphans lost"]
    if sig:
        head.append("USR1 latency µs (×tini)")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def row(label, key, floor_kind=None):
        cells = [label]
        if su:
            c = su["commands"].get(floor_kind or key)
            cells.append("—" if c is None else f"{c['median']:.1f} ({_f(c['x_python'], '.2f', '×')})")
        if idle:
            e = idle["members"].get(floor_kind or key) if key != "bare" else None
            if e and e.get("vmhwm_kib") is not None:
                cells += [f"{e['vmhwm_kib'] / 1024:.1f} ({_f(e['rss_x_python_I_S'], '.2f', '×')})",
                          f"{e['wakeups_per_s']:.2f}", f"{e['cpu_us_per_s']:.1f}"]
            else:
                cells += ["—", "—", "—"]
        if td:
            grace_ms = td["grace_s"] * 1000
            for variant in ("honour", "ignore"):
                sc = td["scenarios"].get(f"{big}-{variant}")
                c = sc["contestants"].get(floor_kind or key) if sc else None
                cells.append(_teardown_cell(c, variant, grace_ms) if floor_kind in (None, "cgroup-kill")
                             else "—")
        if orph:
            c = orph["contestants"].get(key) if not floor_kind else None
            if c:
                cells += [_f(c["x_bare"], ".3f", "×"), _f(c["peak_zombies"], "d"),
                          _f(c["escaped_orphans"], ".0f")]
            else:
                cells += ["—", "—", "—"]
        if sig:
            c = sig["contestants"].get(key) if not floor_kind else None
            cells.append("—" if not c or c["median"] is None
                         else f"{c['median']:.0f} ({_f(c['x_tini'], '.2f', '×')})")
        lines.append("| " + " | ".join(cells) + " |")

    for key in keys:
        row(contestants[key]["label"], key)
    if su and "reaper-version" in su["commands"]:
        row("(diagnostic) `reaper --version`", "reaper-version", "reaper-version")
    if su or idle:
        row("floor: `python -c pass` / idle `python`", "python", "python")
        row("floor: `python -I -S`", "python-I-S", "python-I-S")
    if td:
        row("floor: cgroup.kill", "cgroup-kill", "cgroup-kill")
    lines.append("")
    legend = []
    if su:
        legend.append(f"start-up: median of {su['rounds']} interleaved runs of `<launcher> true`")
    if idle:
        legend.append(f"RSS: VmHWM of the supervisor process; idle: context switches and CPU time "
                      f"of the supervisor over {idle['window_s']:g} s of supervising `sleep`")
    if td:
        legend.append("teardown: SIGTERM to the launcher until the trial cgroup is empty "
                      "(×floor; `g+` = beyond the grace, in floors); **left** = job processes "
                      "alive at the cap; (hung) = the launcher itself never exited")
    if orph:
        legend.append("orphans: job wall time ×bare; peak zombies held by the supervisor; orphans "
                      "lost = adopted by the bench instead of the supervisor")
    if sig:
        legend.append(f"USR1: median of {sig['rounds']} rounds, kill() until the job's handler wrote")
    if legend:
        lines.append("; ".join(legend) + ".")
        lines.append("")
    if td:
        reps = sorted({sc.get("reps", td["reps"]) for sc in td["scenarios"].values()}, reverse=True)
        lines.append(f"Teardown, all sizes (grace {td['grace_s']:g} s; cap {td['cap_s']:g} s + 1 s "
                     f"per 1,000 processes; median of {' or '.join(map(str, reps))} runs; `left` = job "
                     f"processes alive after the cap; `—` = not run at that size):")
        lines.append("")
        names = list(td["scenarios"])
        lines.append("| contestant | " + " | ".join(
            f"N={td['scenarios'][n]['n']} {td['scenarios'][n]['variant']}" for n in names) + " |")
        lines.append("|" + "---|" * (len(names) + 1))
        for key in keys + ["cgroup-kill"]:
            cells = []
            label = contestants[key]["label"] if key in contestants else "cgroup.kill (floor)"
            for n in names:
                sc = td["scenarios"][n]
                cells.append(_teardown_cell(sc["contestants"].get(key), sc["variant"],
                                            td["grace_s"] * 1000))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if m.get("api"):
        import apibench
        lines += apibench.markdown(m["api"])
    import jobs
    lines += jobs.markdown(m)
    ts = doc.get("targets", [])
    if ts:
        lines.append("Targets (reaper, both containments):")
        lines.append("")
        lines.append("| metric | target | contestant | measured | met | detail |")
        lines.append("|---|---|---|---|---|---|")
        for t in ts:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**NO**")
            lines.append(f"| {t['metric']} | {t['target']} | {t['contestant']} | "
                         f"{t['measured'] or '—'} | {met} | {t['detail']} |")
        lines.append("")
    for note in doc.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS.json")
    with open(sys.argv[1]) as f:
        d = json.load(f)
    sys.stdout.write(markdown(d))
