"""Ratios, goals, and the written results: ``<machine>.json``, ``<machine>.md``, PNG plots."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any

from benchmarks import _impls

MISS_ALLOWANCE = 1.10   # "no slower than": a tfscan row misses when > 1.10x (timing noise)
LINEAR_LIMIT = 1.3      # gradient per-step time, largest T vs T=500 (or the smallest T)
BINOMIAL_MEMORY_LIMIT = 2.0  # issue 13: peak at T=20,000 within 2x of T=2,000
BINOMIAL_TIME_LIMIT = 3.0  # issue 13: within 3x of remat=False
COMPILE_LIMIT = 1.5     # compile time at the largest T vs the smallest
KERAS_COMPILE_LIMIT = 1.5  # issue 14: a Keras first epoch's compile within 1.5x Keras's own
VECTORIZED_MAP_SPEEDUP = 20.0

MEASURED = ("ok", "over budget")


def _has_value(r: dict) -> bool:
    return r.get("status") in MEASURED and r.get("value") is not None


def _group(r: dict) -> str:
    """Rows compared with each other: the same workload and T (and, for Keras, the same layer)."""
    if r["workload"] in ("keras", "keras-predict", "keras-fit"):  # e.g. "LSTM", "LSTM[mixed_bfloat16]"
        return r["impl"].split(".", 1)[-1].split("@")[0]
    return ""


DERIVED = ("ratio_jax", "ratio_best_other", "best_other", "misses", "compile_ratio")


def rerender(json_path: str, out_dir: str) -> dict[str, str]:
    """Recompute ratios and goals of a results file and write its tables and plots again."""
    with open(json_path) as f:
        result = json.load(f)
    for r in result["records"]:
        for k in DERIVED:
            r.pop(k, None)
    refs = {w["key"]: w.get("reference") for w in result["workloads"]}
    kinds = {w["key"]: w.get("kind") for w in result["workloads"]}
    kinds.setdefault("keras", "keras")
    kinds.setdefault("keras-predict", "keras")
    annotate(result["records"], refs)
    result["goals"] = goals(result["records"], kinds, refs)
    return write(result, out_dir)


def annotate(records: list[dict], refs: dict[str, str]) -> None:
    """Add ``ratio_jax``, ``ratio_best_other`` and ``best_other`` to every measured record."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["workload"], r["size"], _group(r))].append(r)
    for (wl, _, _), group in groups.items():
        measured = [r for r in group if _has_value(r)]
        ref = next((r for r in measured if r["impl"] == refs.get(wl)), None)
        for r in measured:
            me = _impls.impl(r["impl"])
            if ref is not None and ref["value"] > 0:
                r["ratio_jax"] = r["value"] / ref["value"]
            others = [o for o in measured if o is not r and _impls.impl(o["impl"]).peer
                      and (_impls.impl(o["impl"]).family != "tfscan" if me.family == "tfscan" else True)]
            if others:
                best = min(others, key=lambda o: o["value"])
                if best["value"] > 0:
                    r["ratio_best_other"] = r["value"] / best["value"]
                    r["best_other"] = best["impl"]


def goals(records: list[dict], kinds: dict[str, str], refs_jax: dict[str, str] | None = None) -> list[dict]:
    """Check tfscan's rows against the issue's goals; mark each miss on its row too."""
    out: list[dict] = []
    refs_jax = refs_jax or {}

    def add(goal, impl, ok, detail, rows=()):
        status = "n/a" if ok is None else ("met" if ok else "MISS")
        out.append({"goal": goal, "impl": impl, "status": status, "detail": detail})
        if ok is False:
            for r in rows:
                r.setdefault("misses", []).append(goal)

    tf_rows = [r for r in records if _impls.impl(r["impl"]).family == "tfscan"
               and _impls.impl(r["impl"]).goal]
    # G1: forward and gradient rows no slower than the fastest other implementation.
    for r in tf_rows:
        if kinds.get(r["workload"]) in ("forward", "gradient", "hvp") and r["metric"] == "time" \
                and _has_value(r) and "ratio_best_other" in r:
            ok = r["ratio_best_other"] <= MISS_ALLOWANCE
            add("no slower than the fastest other implementation", f"{r['impl']} · {r['workload']} "
                f"T={r['size']}", ok, f"{r['ratio_best_other']:.2f}x {r['best_other']}", [r])
    # G2: gradient linear in T.
    for wl in [w for w, k in kinds.items() if k == "gradient" and not w.startswith("compile")]:
        for key in sorted({r["impl"] for r in tf_rows if r["workload"] == wl}):
            pts = sorted([r for r in tf_rows if r["workload"] == wl and r["impl"] == key
                          and _has_value(r)], key=lambda r: r["size"])
            if len(pts) < 2:
                continue
            base = next((r for r in pts if r["size"] >= 500), pts[0])
            last = pts[-1]
            if last is base:
                continue
            ratio = (last["value"] / last["size"]) / (base["value"] / base["size"])
            context = []
            for other in (refs_jax.get(wl), last.get("best_other")):
                o = {r["size"]: r for r in records if r["workload"] == wl and r["impl"] == other
                     and _has_value(r)}
                if other and base["size"] in o and last["size"] in o and other not in [c[0] for c in context]:
                    context.append((other, (o[last["size"]]["value"] / last["size"])
                                    / (o[base["size"]]["value"] / base["size"])))
            ctx = "".join(f"; {name}: {x:.2f}x" for name, x in context)
            add("gradient linear in T", f"{key} · {wl}", ratio <= LINEAR_LIMIT,
                f"per-step time at T={last['size']} is {ratio:.2f}x that at T={base['size']} "
                f"(limit {LINEAR_LIMIT}{ctx})", [last])
    # G3: vmap no slower than the fastest peer, and >= 20x faster than tf.vectorized_map.
    vm = [r for r in records if r["workload"] == "vmap"]
    for key in ("tfscan.vmap", "tfscan.jit.vmap"):
        rows = [r for r in vm if r["impl"] == key]
        for r in rows:
            if not _has_value(r):
                add("vmap of a scan no slower than the fastest peer", key, None,
                    r.get("note", r.get("status", "")))
                continue
            peers = [o for o in vm if _has_value(o) and o["impl"] in
                     ("jax.vmap", "tf.scan.batched", "tf.scan.batched@xla")]
            if peers:
                best = min(peers, key=lambda o: o["value"])
                ratio = r["value"] / best["value"]
                add("vmap of a scan no slower than the fastest peer", key, ratio <= MISS_ALLOWANCE,
                    f"{ratio:.2f}x {best['impl']}", [r])
            vmap_rows = [o for o in vm if _has_value(o) and o["impl"] == "vectorized_map"]
            if vmap_rows:
                speedup = vmap_rows[0]["value"] / r["value"]
                jax_row = next((o for o in vm if _has_value(o) and o["impl"] == "jax.vmap"), None)
                ctx = (f" (JAX's vmap: {vmap_rows[0]['value'] / jax_row['value']:.3g}x; "
                       f"goal from issue 4)") if jax_row else " (goal from issue 4)"
                add(f">= {VECTORIZED_MAP_SPEEDUP:g}x faster than tf.vectorized_map", key,
                    speedup >= VECTORIZED_MAP_SPEEDUP, f"{speedup:.3g}x{ctx}", [r])
    # G4: compile time independent of T.
    for wl in [w for w, k in kinds.items() if w.startswith("compile")]:
        for key in sorted({r["impl"] for r in tf_rows if r["workload"] == wl}):
            pts = sorted([r for r in tf_rows if r["workload"] == wl and r["impl"] == key
                          and _has_value(r)], key=lambda r: r["size"])
            if len(pts) < 2:
                continue
            ratio = pts[-1]["value"] / max(pts[0]["value"], 1e-9)
            add("compile time independent of T", f"{key} · {wl}", ratio <= COMPILE_LIMIT,
                f"T={pts[-1]['size']}: {ratio:.2f}x the compile time at T={pts[0]['size']} "
                f"(limit {COMPILE_LIMIT})", [pts[-1]])
    # G5: T=10 eager call no slower than JAX's un-jitted lax.scan.
    ov = [r for r in records if r["workload"] == "overhead"]
    ref = next((r for r in ov if r["impl"] == "jax.nojit" and _has_value(r)), None)
    for r in ov:
        if r["impl"] == "tfscan" and _has_value(r) and ref is not None:
            ratio = r["value"] / ref["value"]
            add("T=10 eager call no slower than un-jitted jax.lax.scan", "tfscan",
                ratio <= MISS_ALLOWANCE, f"{ratio:.2f}x jax.nojit", [r])
    # G7 (issue 14, item 3): Keras fit epochs no slower than Keras's own layer, compile within 1.5x.
    fit = [r for r in records if r["workload"] == "keras-fit" and _has_value(r)]
    for r in [r for r in fit if r["impl"].startswith("tfscan.")]:
        peer = next((o for o in fit if o["impl"] == "keras." + r["impl"].split(".", 1)[1]), None)
        if peer is None:
            continue
        ratio = r["value"] / peer["value"]
        add("Keras fit epoch no slower than Keras's layer", r["impl"], ratio <= MISS_ALLOWANCE,
            f"{ratio:.2f}x {peer['impl']} ({r['value']:.3g} vs {peer['value']:.3g} s/epoch)", [r])
        c = r["compile_ratio"] = r["compile_s"] / max(peer["compile_s"], 1e-9)
        add(f"Keras first-epoch compile within {KERAS_COMPILE_LIMIT:g}x Keras's", r["impl"],
            c <= KERAS_COMPILE_LIMIT, f"{c:.2f}x ({r['compile_s']:.2f} vs {peer['compile_s']:.2f} s; first "
            f"epochs {r['first_s']:.2f} vs {peer['first_s']:.2f} s)", [r])
    # G6 (issue 13): binomial checkpointing: memory O(log T), time within 3x of remat=False.
    binom = "tfscan[remat=binomial]"
    mem = sorted([r for r in records if r["workload"] == "memory-final" and r["impl"] == binom
                  and _has_value(r)], key=lambda r: r["size"])
    if len(mem) >= 2:
        ratio = mem[-1]["value"] / max(mem[0]["value"], 1.0)
        add("binomial checkpointing: peak memory grows like log T", binom, ratio <= BINOMIAL_MEMORY_LIMIT,
            f"peak at T={mem[-1]['size']} is {ratio:.2f}x that at T={mem[0]['size']} "
            f"(limit {BINOMIAL_MEMORY_LIMIT})", [mem[-1]])
    fin = [r for r in records if r["workload"] == "final-grad" and _has_value(r)]
    for r in [r for r in fin if r["impl"] == binom]:
        base = next((o for o in fin if o["impl"] == "tfscan[remat=False]" and o["size"] == r["size"]), None)
        if base is not None:
            ratio = r["value"] / base["value"]
            add("binomial checkpointing: time within 3x of remat=False", f"{binom} T={r['size']}",
                ratio <= BINOMIAL_TIME_LIMIT, f"{ratio:.2f}x tfscan[remat=False]", [r])
    return out


# ---------------------------------------------------------------- formatting

def fmt_time(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_ns(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "—"
    return f"{b / 2**20:.1f} MiB"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _note(r: dict) -> str:
    parts = []
    if r.get("misses"):
        parts.append("**MISS**: " + "; ".join(sorted(set(r["misses"]))))
    if r.get("note"):
        parts.append(r["note"])
    return " ".join(parts).replace("|", "\\|")


def markdown(result: dict) -> str:
    meta, records = result["meta"], result["records"]
    lines = [f"# tfscan benchmarks on `{result['machine']}`", ""]
    lines += [f"- mode: **{result['mode']}**, run {meta['date']} in {meta['wall_s']:.0f} s",
              f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['platform']}; load average "
              f"(1, 5, 15 min) {meta['load_average']['before']} before the run, "
              f"{meta['load_average']['after']} after (other processes share the cores)",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
              f"- timing: median of up to {meta['settings']['reps']} reps after a first call "
              f"and a warm-up call; a series stops once a call exceeds "
              f"{meta['settings']['series_budget_s']:g} s (\"over budget\")",
              "- ×JAX: time / JAX's time on the same row. ×fastest other: time / the fastest "
              "*other* scan implementation on the same T (for tfscan rows: the fastest non-tfscan one; "
              "vectorized and associative references excluded)",
              f"- tfscan misses (**MISS**) are rows more than {MISS_ALLOWANCE:.2f}x the fastest other "
              "(the issue's goal is \"no slower\"; 10% is allowed for noise), and the goals below",
              "- tfscan features present: " + ", ".join(f"{k}={'yes' if v else 'no'}"
                                                      for k, v in meta["features"].items()), ""]
    lines += ["## Goals", "", "| goal | tfscan variant | result | detail |", "|---|---|---|---|"]
    for g in result["goals"]:
        if g["goal"].startswith("no slower than the fastest"):
            continue
        lines.append(f"| {g['goal']} | {g['impl']} | {'**MISS**' if g['status'] == 'MISS' else g['status']} "
                     f"| {g['detail']} |")
    per_row = [g for g in result["goals"] if g["goal"].startswith("no slower than the fastest")]
    if per_row:
        miss = [g for g in per_row if g["status"] == "MISS"]
        lines.append(f"| no slower than the fastest other implementation (every forward and gradient row) "
                     f"| all tfscan rows | {'**MISS**' if miss else 'met'} | {len(per_row) - len(miss)} of "
                     f"{len(per_row)} rows met; misses are marked in the tables |")
    lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if result.get("notes"):
        lines.append("")
    for wl in result["workloads"]:
        rows = [r for r in records if r["workload"] == wl["key"]]
        if not rows:
            continue
        lines += [f"## {wl['title']}", ""]
        if wl.get("plot"):
            lines += [f"![{wl['key']}]({wl['plot']})", ""]
        if wl.get("note"):
            lines += [wl["note"], ""]
        memory = wl.get("measure") == "peak_bytes"
        compile_ = wl.get("measure") == "compile"
        head = "peak memory" if memory else ("compile time" if compile_ else "time per call")
        extra = " | first call | steady call" if compile_ else (" | ns/step" if wl.get("per_step") else "")
        other_head = "×smallest other" if memory else "×fastest other"
        lines += [f"| T | implementation | {head}{extra} | ×JAX | {other_head} | note |",
                  "|---|---|---|" + ("---|---|" if compile_ else ("---|" if wl.get("per_step") else ""))
                  + "---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["size"], r.get("value") if _has_value(r) else math.inf)):
            val = r.get("value") if _has_value(r) else None
            cell = fmt_bytes(val) if memory else fmt_time(val)
            if r.get("status") in ("unavailable", "error", "wrong") or (val is None and r.get("status")):
                cell = r["status"] if val is None else cell
            ext = ""
            if memory and r.get("tf_allocator_peak"):
                r = dict(r, note=(r.get("note", "") + f" TF allocator peak: "
                                  f"{fmt_bytes(r['tf_allocator_peak'])}").strip())
            if compile_:
                ext = f" | {fmt_time(r.get('first_s'))} | {fmt_time(r.get('median_s'))}"
            elif wl.get("per_step"):
                ext = f" | {fmt_ns(r['per_step_ns'])}" if "per_step_ns" in r and val is not None else " | —"
            best = r.get("best_other")
            other = fmt_ratio(r.get("ratio_best_other")) + (f" ({best})" if best else "")
            lines.append(f"| {r['size']} | {_impls.impl(r['impl']).label} | {cell}{ext} | "
                         f"{fmt_ratio(r.get('ratio_jax'))} | {other} | {_note(r)} |")
        lines.append("")
    return "\n".join(lines)


def _headline_cell(r: dict) -> str:
    """A tfscan row in the README's summary: its value, its ratio to the fastest other and
    **MISS** after the figure whose goal it misses. A ``keras-fit`` row names its peer (Keras'
    layer in the same configuration) and also gives its first-epoch compile ratio."""
    misses = set(r.get("misses") or ())
    ratio = fmt_ratio(r.get("ratio_best_other"))
    if r["workload"] != "keras-fit":
        return f"{r['impl']}: {fmt_time(r['value'])} ({ratio})" + (" **MISS**" if misses else "")
    epoch_goal = any(not g.startswith("Keras first-epoch compile") for g in misses)
    compile_goal = len(misses) > int(epoch_goal)
    text = f"{r['impl']}: {fmt_time(r['value'])} ({ratio} {r.get('best_other', '')})".replace(" )", ")")
    text += " **MISS**" if epoch_goal else ""
    if r.get("compile_ratio") is not None:
        text += f"; compile {fmt_ratio(r['compile_ratio'])}" + (" **MISS**" if compile_goal else "")
    return text


def headline(result: dict) -> str:
    """The README's summary: per workload, at its largest T, JAX, tfscan, and the fastest other."""
    meta = result["meta"]
    lines = [f"Measured on `{result['machine']}` ({meta['cpu']}, {meta['cores']} cores), {meta['date']}, "
             f"`--{result['mode']}` run; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
             + f". Load average before/after: {meta['load_average']['before'][0]} / "
             f"{meta['load_average']['after'][0]}.", "",
             "| workload | T | JAX | tfscan (each variant, ×fastest other) | fastest other |",
             "|---|---|---|---|---|"]
    for wl in result["workloads"]:
        rows = [r for r in result["records"] if r["workload"] == wl["key"] and _has_value(r)]
        if not rows or wl.get("measure") == "peak_bytes":
            continue
        T = max(r["size"] for r in rows if _impls.impl(r["impl"]).family == "tfscan") if any(
            _impls.impl(r["impl"]).family == "tfscan" for r in rows) else max(r["size"] for r in rows)
        at = [r for r in rows if r["size"] == T]
        ref = next((r for r in at if r["impl"] == wl.get("reference")), None)
        tfs = sorted([r for r in at if _impls.impl(r["impl"]).family == "tfscan"
                      and _impls.impl(r["impl"]).goal], key=lambda r: r["value"])
        cells = "<br>".join(_headline_cell(r) for r in tfs) or "—"
        best = tfs[0].get("best_other") if tfs else None
        best_r = next((r for r in at if r["impl"] == best), None)
        other = (f"{best}: {fmt_time(best_r['value'])}" if best_r else "—") if wl["key"] != "keras-fit" \
            else "Keras's layer in the same configuration (each ratio names it)"
        lines.append(f"| {wl['title']} | {T} | {fmt_time(ref['value']) if ref else '—'} | {cells} | {other} |")
    lines += ["", "Goals:", "", "| goal | tfscan variant | result | detail |", "|---|---|---|---|"]
    lines += [ln for ln in markdown(result).split("## Goals", 1)[1].split("\n## ", 1)[0].split("\n")[4:]
              if ln.startswith("| ")]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(result: dict, readme: str) -> None:
    """Replace the text between the README's results markers with the headline table."""
    try:
        with open(readme) as f:
            text = f.read()
    except OSError:
        return
    if README_BEGIN not in text or README_END not in text:
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with open(readme, "w") as f:
        f.write(head + README_BEGIN + "\n" + headline(result) + "\n" + README_END + tail)


def plot(result: dict, out_dir: str) -> None:
    """One PNG per workload with several sizes: time vs T, log-log, a line per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    for wl in result["workloads"]:
        rows = [r for r in result["records"] if r["workload"] == wl["key"] and _has_value(r)]
        sizes = sorted({r["size"] for r in rows})
        if len(sizes) < 2 and result["mode"] != "smoke":
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for key in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r["size"], r["value"]) for r in rows if r["impl"] == key)
            style = "-o" if _impls.impl(key).family == "tfscan" else "--s" if key.startswith("jax") else ":^"
            lw = 2.4 if _impls.impl(key).family == "tfscan" else 1.3
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, lw=lw, ms=4,
                    label=_impls.impl(key).label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("compile time (s)" if wl.get("measure") == "compile" else "time per call (s)")
        ax.set_title(f"{wl['title']}\n{result['machine']}, {result['mode']} run", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        name = f"{result['machine']}-{wl['key']}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        wl["plot"] = name


def write(result: dict, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    try:
        plot(result, out_dir)
    except Exception as e:  # noqa: BLE001 - plots are a nicety; the tables still get written
        result.setdefault("notes", []).append(f"plots failed: {type(e).__name__}: {e}")
    base = os.path.join(out_dir, result["machine"])
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(markdown(result) + "\n")
    return {"json": base + ".json", "md": base + ".md"}


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)
