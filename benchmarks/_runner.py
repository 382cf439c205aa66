"""Run the workloads: check every implementation against the reference, then time it.

For each size, the reference implementation (JAX where there is one) runs first; every
other implementation's first call is compared with it (relative error within the
workload's tolerance) before it is timed, so a wrong implementation cannot win. A series
(one implementation across sizes) stops at the first error, or once a steady call exceeds
the series budget ("over budget"), or when extrapolating it predicts that the next size
would ("over budget, not run").
"""

from __future__ import annotations

import dataclasses
import gc
import re
import sys
import time
import traceback
import numpy as np

import tfscan
from benchmarks import _floors, _impls, _timing
from benchmarks._workloads import Workload, missing


def _short(e: BaseException) -> str:
    text = re.sub(r"\[_XlaMustCompile[^\]]*\]", "", f"{type(e).__name__}: {e}")
    text = re.sub(r"__inference_\w+", "(function)", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(lines[:2])
    return text if len(text) < 240 else text[:237] + "..."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_workload(w: Workload, settings: _timing.Settings, seed: int = 0) -> list[dict]:
    if w.budget_s:  # a workload of slow calls (seconds): its own budget and first-call limit
        settings = dataclasses.replace(settings, series_budget_s=w.budget_s,
                                       abort_first_s=max(settings.abort_first_s, w.budget_s))
    records: list[dict] = []
    stopped: dict[str, tuple[str, str]] = {}      # impl -> (status, note) for the sizes left
    series: dict[str, list[tuple[float, float]]] = {k: [] for k in w.impls}
    checked: set[str] = set()
    ref_key = next((k for k in w.impls if _impls.impl(k).family == "jax"), w.impls[0])
    for size in w.sizes:
        data = _data(w, size, seed)
        ref_out = None
        order = [ref_key] + [k for k in w.impls if k != ref_key]
        for key in order:
            rec = {"workload": w.key, "size": size, "impl": key, "metric": w.measure}
            records.append(rec)
            absent = missing(w, key)
            if absent:
                rec.update(status="unavailable",
                           note="not available yet: tfscan has no " + ", ".join(absent))
                continue
            if key in stopped:
                rec["status"], rec["note"] = stopped[key]
                continue
            budget_s = settings.series_budget_s
            est = _timing.predicted_over_budget(series[key], size, budget_s)
            if est is not None:
                note = f"over budget, not run (predicted {est:.3g} s per call > {budget_s:g} s)"
                rec.update(status="over budget", note=note)
                stopped[key] = ("over budget", "over budget, not run (series stopped)")
                continue
            t0 = time.perf_counter()
            try:
                fn = w.build(key, data)
                first: list = []
                if key == ref_key or key in checked or ref_out is None or key in _floors.UNCHECKED:
                    timing = _timing.measure(fn, settings, first)
                    if key == ref_key:
                        ref_out = first[0]
                    elif key in _floors.UNCHECKED:
                        rec["note"] = "a floor: computes nothing, not value-checked"
                    elif key not in checked:
                        rec["note"] = f"not value-checked ({ref_key} failed)"
                    err = None
                else:
                    # Check before timing: only the first call runs until the values agree.
                    t1 = time.perf_counter()
                    out = fn()
                    first_s = time.perf_counter() - t1
                    err = _impls.max_rel_error(out, ref_out)
                    del out
                    if not err <= w.tol:
                        rec.update(status="wrong", error_rel=err,
                                   note=f"WRONG: max relative error {err:.2g} vs {ref_key} "
                                        f"(tolerance {w.tol:g}); not timed")
                        stopped[key] = ("wrong", "not run (wrong at a smaller size)")
                        log(f"  {w.key} T={size} {key}: WRONG ({err:.2g})")
                        continue
                    checked.add(key)
                    if first_s > settings.abort_first_s:
                        timing = _timing.Timing(first_s, float("nan"), float("nan"), 0, 0, [], aborted=True)
                    else:
                        timing = _timing.measure(fn, settings)  # its first call is a warm-up here
                        timing.first_s = first_s
                if key == ref_key:
                    checked.add(key)
                del fn
                if timing.aborted:
                    note = (f"over budget: the first call took {timing.first_s:.3g} s (with tracing and "
                            f"compilation, > {settings.abort_first_s:g} s); not timed, series stopped")
                    rec.update(status="over budget", first_s=timing.first_s, note=note)
                    stopped[key] = ("over budget", "over budget, not run (series stopped)")
                    log(f"  {w.key} T={size} {key}: first call {timing.first_s:.3g} s: over budget")
                    continue
            except Exception as e:  # noqa: BLE001 - any failure is a result to show
                rec.update(status="error", error=_short(e), note="error: " + _short(e))
                stopped[key] = ("error", "not run (error at a smaller size)")
                log(f"  {w.key} T={size} {key}: ERROR {_short(e)}")
                if "--trace" in sys.argv:
                    traceback.print_exc()
                gc.collect()
                continue
            value = timing.compile_s if w.measure == "compile" else timing.median_s
            rec.update(status="ok", value=value, first_s=timing.first_s, median_s=timing.median_s,
                       min_s=timing.min_s, reps=timing.reps, inner=timing.inner,
                       wall_s=time.perf_counter() - t0)
            if err is not None:
                rec["error_rel"] = err
            if w.per_step:
                rec["per_step_ns"] = value / size * 1e9
            steady = timing.median_s
            series[key].append((size, steady))
            if steady > budget_s:
                rec["status"] = "over budget"
                rec["note"] = f"over budget ({steady:.3g} s per call > {budget_s:g} s): series stopped"
                stopped[key] = ("over budget", "over budget, not run (series stopped)")
            log(f"  {w.key} T={size} {key}: {value * 1e3:.4g} ms"
                + (f" (first call {timing.first_s * 1e3:.4g} ms)" if w.measure == "compile" else "")
                + ("" if err is None else f", check err {err:.1g}"))
        gc.collect()
    return records


def _data(w: Workload, size: int, seed: int) -> dict:
    return w.inputs(size, np.random.default_rng(seed))


def available_features() -> dict:
    import inspect
    try:
        has_remat = "remat" in inspect.signature(tfscan.scan).parameters
    except (TypeError, ValueError):
        has_remat = False
    feats = {name: hasattr(tfscan, name) for name in
             ("vmap", "jit", "grad", "value_and_grad", "associative_scan", "keras")}
    feats["remat"] = has_remat
    return feats



