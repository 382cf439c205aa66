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
            "compile-fwd", "compile-grad", "overhead", "final-grad", "memory-final", "keras-fit", "elman-hvp"} <= workloads
    fit = {r["impl"]: r for r in result["records"] if r["workload"] == "keras-fit"}
    assert set(fit) == {"keras.GRU[mixed_bfloat16]", "tfscan.GRU[mixed_bfloat16]"}
    assert all(r["status"] == "ok" for r in fit.values()), fit
    # Every implementation that ran agreed with the reference: none is marked wrong.
    assert not [r for r in result["records"] if r["status"] == "wrong"]
    # tfscan and JAX were measured on every timing workload.
    for wl in ("cumsum", "elman-fwd", "elman-grad", "light-fwd", "light-grad"):
        ok = {r["impl"] for r in result["records"] if r["workload"] == wl and "value" in r}
        assert {"tfscan", "jax"} <= ok, (wl, ok)


def test_keras_fit_summary_marks_the_goal_each_configuration_misses():
    """The README summary's 7b cell compares each tfscan configuration with Keras' layer in the
    same configuration and puts **MISS** after the figure that misses: a compile miss used to
    be shown as a **MISS** after a 0.65x epoch ratio."""
    from benchmarks import _report

    def rec(impl, value, compile_s):
        return {"workload": "keras-fit", "size": 100, "impl": impl, "metric": "time", "status": "ok",
                "value": value, "compile_s": compile_s, "first_s": value + compile_s}
    records = [rec("keras.LSTM[mixed_bfloat16]", 0.655, 0.53), rec("tfscan.LSTM[mixed_bfloat16]", 0.424, 1.15),
               rec("keras.LSTM[MirroredStrategy]", 0.856, 1.17), rec("tfscan.LSTM[MirroredStrategy]", 1.61, 1.21)]
    _report.annotate(records, {})
    _report.goals(records, {"keras-fit": "keras"})
    bf16, mirrored = records[1], records[3]
    assert _report._headline_cell(bf16) == ("tfscan.LSTM[mixed_bfloat16]: 424 ms (0.65x keras.LSTM[mixed_bfloat16]); "
                                            "compile 2.17x **MISS**")
    assert _report._headline_cell(mirrored) == ("tfscan.LSTM[MirroredStrategy]: 1.61 s (1.88x "
                                                "keras.LSTM[MirroredStrategy]) **MISS**; compile 1.03x")
