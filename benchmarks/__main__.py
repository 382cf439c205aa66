"""``python -m benchmarks [--quick] [--smoke] [--out DIR] [--machine NAME] [--only W,...]``."""

from __future__ import annotations

import os

# Before TensorFlow, Keras or JAX are imported: Keras runs on TensorFlow here, JAX on CPU.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

SETTINGS = {  # mode -> timing settings (see _timing.Settings)
    "full": dict(reps=11, point_budget_s=5.0, series_budget_s=10.0, min_rep_s=0.01, abort_first_s=30.0),
    "quick": dict(reps=5, point_budget_s=0.4, series_budget_s=0.6, min_rep_s=0.002, abort_first_s=2.0),
    "smoke": dict(reps=1, point_budget_s=0.0, series_budget_s=5.0, min_rep_s=0.0, warmup=False,
                  abort_first_s=10.0),
}


def default_machine() -> str:
    return f"{platform.machine().lower() if platform.machine() not in ('x86_64', 'AMD64') else 'cpu'}" \
           f"-{os.cpu_count()}core"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes: ~11 minutes on 2 cores (timed rows under 2)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition: only proves it runs")
    p.add_argument("--out", default=None,
                   help="output directory (default: benchmarks/results, or a temporary one for --smoke, "
                        "so a smoke run never overwrites the committed results)")
    p.add_argument("--machine", default=None, help="name of the results files (default: cpu-<N>core)")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads to run (e.g. elman-grad,memory); default all")
    p.add_argument("--trace", action="store_true", help="print tracebacks of failing implementations")
    p.add_argument("--rerender", metavar="JSON", default=None,
                   help="measure nothing: recompute the ratios and goals of a results file and "
                        "write its Markdown and plots again (into --out)")
    return p.parse_args(argv)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """The commit of the code measured (``TFSCAN_COMMIT`` overrides, for an exported tree)."""
    if os.environ.get("TFSCAN_COMMIT"):
        return os.environ["TFSCAN_COMMIT"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _update_readmes(result: dict, out: str) -> None:
    """Results written to benchmarks/results/: refresh the summary table in the README
    beside it and in the project's README (between their results markers)."""
    from benchmarks import _report

    out_abs = os.path.abspath(out)
    if result["mode"] == "smoke" or os.path.basename(out_abs) != "results":
        return
    bench_dir = os.path.dirname(out_abs)
    for readme in (os.path.join(bench_dir, "README.md"), os.path.join(os.path.dirname(bench_dir), "README.md")):
        _report.update_readme(result, readme)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="tfscan-bench-smoke-") if args.smoke else os.path.join(HERE, "results")
    if args.rerender:
        from benchmarks import _report
        import json
        paths = _report.rerender(args.rerender, args.out)
        with open(paths["json"]) as f:
            result = json.load(f)
        _update_readmes(result, args.out)
        print(f"wrote {paths['md']} and {paths['json']}", file=sys.stderr)
        return 0
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    machine = args.machine or default_machine()
    only = set(args.only.split(",")) if args.only else None
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    warnings.filterwarnings("ignore")

    import numpy as np
    import tensorflow as tf
    import jax
    import keras
    import matplotlib
    import tfscan
    from benchmarks import _impls, _keras, _memory, _report, _runner, _timing, _workloads

    settings = _timing.Settings(**SETTINGS[mode])
    features = _runner.available_features()
    log = _runner.log
    log(f"benchmarks: mode={mode} machine={machine} out={args.out}")
    log("tfscan features: " + ", ".join(f"{k}={v}" for k, v in features.items()))

    records: list[dict] = []
    wl_meta: list[dict] = []
    refs: dict[str, str] = {}
    kinds: dict[str, str] = {}
    notes: list[str] = []
    for w in _workloads.workloads(mode):
        if only and w.key not in only:
            continue
        ref = next((k for k in w.impls if _impls.impl(k).family == "jax"), w.impls[0])
        refs[w.key], kinds[w.key] = ref, w.kind
        wl_meta.append({"key": w.key, "title": w.title, "measure": w.measure, "kind": w.kind,
                        "per_step": w.per_step, "sizes": w.sizes, "reference": ref, "note": w.note})
        log(f"[{time.perf_counter() - t_start:5.0f} s] {w.title}")
        records += _runner.run_workload(w, settings)

    if not only or "memory" in only:
        T = _workloads.SIZES[mode]["memory"]
        policies = _impls.remat_policies(T)
        variants = ["jax", "jax.checkpoint", "tf.scan", "tfscan"]
        note = (f"Peak memory of one gradient call of the Elman RNN (B=32, I=64, H=128) at T={T}, "
                f"measured in a fresh subprocess.")
        if policies is None:
            notes.append("6. Peak memory per `remat` policy: not available yet (tfscan.scan has no "
                         "`remat` argument); the default tfscan gradient is measured.")
            note += " `remat` policies: not available yet (tfscan.scan has no `remat` argument)."
        else:
            # Each remat policy eagerly and compiled whole (tf.function(jit_compile), like JAX's
            # jax.jit(jax.grad)), next to JAX's matching policy; "@eager" JAX rows run jax.grad
            # op by op, materialising the ys and their cotangent as an eager TF gradient does.
            k = policies[-1]
            variants += [f"tfscan[remat={p}]" for p in policies]
            variants += [f"tfscan[remat={p}]@xla" for p in (False, True, "sqrt", k)]
            variants += ["jax.checkpoint[every=sqrt]", f"jax.checkpoint[every={k}]", "jax.checkpoint@eager"]
        log(f"[{time.perf_counter() - t_start:5.0f} s] 6. peak memory, T={T}: {', '.join(variants)}")
        refs["memory"], kinds["memory"] = "jax", "memory"
        try:
            rep = _memory.measure(T, variants, allocator_stats=mode != "smoke")
            note += f" Method: {rep['method']}."
            for r in rep["results"]:
                r.update(workload="memory", size=T, metric="peak_bytes")
                records.append(r)
                log(f"  memory {r['impl']}: " + (f"{r['value'] / 2**20:.1f} MiB" if r["status"] == "ok"
                                                 else r.get("note", "")))
        except Exception as e:  # noqa: BLE001
            notes.append(f"6. Peak memory: failed: {e}")
            log(f"  memory: FAILED {e}")
        wl_meta.append({"key": "memory", "title": "6. Peak memory of the gradient (Elman RNN)",
                        "measure": "peak_bytes", "kind": "memory", "per_step": False, "sizes": [T],
                        "reference": "jax", "note": note})

    if not only or "memory-final" in only:
        sizes = _workloads.SIZES[mode]["final"]
        variants = _workloads.FINAL_MEMORY_IMPLS if mode != "smoke" else ["jax", "tfscan[remat=binomial]"]
        log(f"[{time.perf_counter() - t_start:5.0f} s] 8. peak memory per checkpointing policy, T={sizes}")
        refs["memory-final"], kinds["memory-final"] = "jax", "memory"
        note = ("Peak memory of one gradient call of the Elman RNN (B=32, I=64, H=128) whose loss reads "
                "only the final carry (no per-step output), per checkpointing policy, each T in a fresh "
                "subprocess.")
        for T in sizes:
            try:
                rep = _memory.measure(T, variants, allocator_stats=mode != "smoke", problem="elman-final")
                for r in rep["results"]:
                    r.update(workload="memory-final", size=T, metric="peak_bytes")
                    records.append(r)
                    log(f"  memory-final T={T} {r['impl']}: " + (
                        f"{r['value'] / 2**20:.1f} MiB" if r["status"] == "ok" else r.get("note", "")))
            except Exception as e:  # noqa: BLE001
                notes.append(f"8. Peak memory per checkpointing policy, T={T}: failed: {e}")
                log(f"  memory-final T={T}: FAILED {e}")
        note += f" Method: {rep['method']}." if "rep" in locals() and "method" in rep else ""
        wl_meta.append({"key": "memory-final", "title": "8. Peak memory per checkpointing policy (Elman RNN, "
                        "loss on the final carry)", "measure": "peak_bytes", "kind": "memory",
                        "per_step": False, "sizes": sizes, "reference": "jax", "note": note})

    for what, number, title in (("train", "7", "Keras training step (train_on_batch)"),
                                ("predict", "7c", "Keras inference (predict_on_batch: Keras' predict function, "
                                                  "a tf.function with no tape)")):
        key = _keras.WORKLOADS[what]
        if only and key not in only:
            continue
        log(f"[{time.perf_counter() - t_start:5.0f} s] {number}. {title}")
        krecs, knote = _keras.run(_workloads.SIZES[mode]["keras"], settings, log, what)
        records += krecs
        kinds[key] = "keras"
        if knote:
            notes.append(f"{number}. {title}: " + knote)
        else:
            wl_meta.append({"key": key, "title": f"{number}. {title}, B=32, I=64, H=128", "measure": "time",
                            "kind": "keras", "per_step": True, "sizes": _workloads.SIZES[mode]["keras"],
                            "reference": None, "note": ""})

    from benchmarks import _keras_fit
    fit_configs = _keras_fit.selected(only)
    if fit_configs:
        log(f"[{time.perf_counter() - t_start:5.0f} s] 7b. Keras model.fit epochs (one subprocess per configuration)")
        records += _keras_fit.run(mode, log, fit_configs)
        kinds["keras-fit"] = "keras-fit"
        size = _keras_fit.SIZES[mode]
        wl_meta.append({"key": "keras-fit", "title": "7b. Keras model.fit, seconds per epoch: tfscan's layer vs "
                        "Keras's, per dtype policy and under MirroredStrategy", "measure": "time",
                        "kind": "keras-fit", "per_step": False, "sizes": [size["T"]], "reference": None,
                        "note": f"`Input((T, 64)) -> LSTM/GRU(128) -> Dense(1)`, {size['N']} samples, batch 32, "
                                f"SGD; median of {size['epochs']} steady epochs per model, alternating "
                                "between the two models in one subprocess per configuration; \"compile\" = "
                                "first epoch minus a steady epoch (Keras compiles no XLA: its first epoch "
                                "is tracing and graph optimisation). See `_keras_fit.py`."})

    for w in wl_meta:
        for r in records:
            if r["workload"] == w["key"] and r.get("status") == "unavailable":
                msg = f"{w['title']}: {_impls.impl(r['impl']).label}: {r['note']}"
                if msg not in notes:
                    notes.append(msg)

    _report.annotate(records, refs)
    goals = _report.goals(records, kinds, refs)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t_start,
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "jax": jax.__version__, "keras": keras.__version__, "numpy": np.__version__,
                     "matplotlib": matplotlib.__version__,
                     "tfscan": f"{tfscan.__version__} ({_git_commit()})"},
        "tfscan_path": os.path.dirname(os.path.abspath(tfscan.__file__)),
        "settings": SETTINGS[mode], "features": features,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
    }
    result = {"machine": machine, "mode": mode, "meta": meta, "workloads": wl_meta,
              "records": records, "goals": goals, "notes": notes}
    paths = _report.write(result, args.out)
    _update_readmes(result, args.out)
    misses = [g for g in goals if g["status"] == "MISS"]
    log(f"[{time.perf_counter() - t_start:5.0f} s] wrote {paths['md']} and {paths['json']}; "
        f"{len(misses)} goal misses of {len(goals)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
