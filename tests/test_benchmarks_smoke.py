"""The benchmark suite runs end to end on tiny sizes (no timing is asserted)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarks_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--smoke", "--out", str(tmp_path),
         "--machine", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "smoke.json") as f:
        result = json.load(f)
    assert (tmp_path / "smoke.md").read_text().startswith("# tfscan benchmarks")
    assert result["mode"] == "smoke"
    workloads = {r["workload"] for r in result["records"]}
    assert {"cumsum", "elman-fwd", "elman-grad", "light-fwd", "light-grad", "vmap",
            "compile-fwd", "compile-grad", "overhead", "final-grad", "memory-final", "keras-fit"} <= workloads
    fit = {r["impl"]: r for r in result["records"] if r["workload"] == "keras-fit"}
    assert set(fit) == {"keras.GRU[mixed_bfloat16]", "tfscan.GRU[mixed_bfloat16]"}
    assert all(r["status"] == "ok" for r in fit.values()), fit
    # Every implementation that ran agreed with the reference: none is marked wrong.
    assert not [r for r in result["records"] if r["status"] == "wrong"]
    # tfscan and JAX were measured on every timing workload.
    for wl in ("cumsum", "elman-fwd", "elman-grad", "light-fwd", "light-grad"):
        ok = {r["impl"] for r in result["records"] if r["workload"] == wl and "value" in r}
        assert {"tfscan", "jax"} <= ok, (wl, ok)
