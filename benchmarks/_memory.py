"""Peak memory of one gradient call, measured in fresh subprocesses.

The number compared across implementations is the peak growth of the process's resident
set during one gradient call: after a first call (compile + run) and ``malloc_trim``, the
RSS is read, the high-water mark is reset (``/proc/self/clear_refs``), the gradient runs
again, and its peak is the new ``VmHWM`` minus that RSS. It includes everything the call
allocates (residuals, outputs, XLA temporaries), for TensorFlow and JAX alike. The child
runs with ``MALLOC_MMAP_THRESHOLD_`` fixed (large buffers go back to the system when freed)
and with ``TF_ENABLE_ONEDNN_OPTS=0``: oneDNN's CPU allocator is a pool that keeps freed
memory, so with it a second call's peak would not show in RSS.

``tf.config.experimental.get_memory_info('CPU:0')`` works on CPU only with oneDNN's
allocator (otherwise: "Allocator stats not available") and sees TensorFlow's allocations
only; a second child reads it for the TensorFlow variants, reported alongside.

Run by the suite as ``python -m benchmarks._memory '<json config>'``; prints one JSON line.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tf_stats_work(tf) -> bool:
    try:
        return tf.config.experimental.get_memory_info("CPU:0").get("peak", 0) > 0
    except (ValueError, RuntimeError):
        return False


def _pick_method(tf) -> str:
    if _tf_stats_work(tf):
        return "tf.config.experimental.get_memory_info"
    if _reset_hwm():
        return "rss"
    return "rss since start (clear_refs unavailable)"


def child(cfg: dict) -> dict:
    import numpy as np
    import tensorflow as tf
    from benchmarks import _impls
    from benchmarks._workloads import Elman, ElmanFinal

    problem = ElmanFinal() if cfg.get("problem") == "elman-final" else Elman()
    data = problem.inputs(cfg["T"], np.random.default_rng(0))
    out = {"T": cfg["T"], "results": []}
    method = None
    for key in cfg["variants"]:
        rec = {"impl": key}
        try:
            fn = _impls.gradient(key, problem, data)
            fn()  # compile and run once
            if method is None:
                method = cfg.get("method") or _pick_method(tf)
                if method == "tf" and not _tf_stats_work(tf):
                    raise RuntimeError("get_memory_info('CPU:0') reports nothing on this build")
            peaks = []
            for _ in range(cfg.get("reps", 2)):
                _trim()
                if method in ("tf", "tf.config.experimental.get_memory_info"):
                    # The call's own peak above what is already held (earlier variants' caches).
                    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
                    tf.config.experimental.reset_memory_stats("CPU:0")
                    r = fn()
                    peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
                    del r
                else:
                    base = _status_kb("VmRSS")
                    _reset_hwm()
                    r = fn()
                    peaks.append((_status_kb("VmHWM") - base) * 1024)
                    del r
            rec.update(status="ok", value=float(min(peaks)))
            del fn
        except Exception as e:  # noqa: BLE001
            text = " ".join(f"{type(e).__name__}: {e}".split())
            rec.update(status="error", error=text[:240], note="error: " + text[:240])
        out["results"].append(rec)
        _trim()
    out["method"] = method or "none (every variant failed)"
    return out


def _run_child(cfg: dict, extra_env: dict, timeout_s: float) -> dict:
    env = dict(os.environ)
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", JAX_PLATFORMS="cpu")
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-m", "benchmarks._memory", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=timeout_s,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:300]
        raise RuntimeError(f"memory subprocess failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def measure(T: int, variants: list[str], allocator_stats: bool = True, timeout_s: float = 900,
            problem: str = "elman") -> dict:
    """Peak memory of each variant's gradient: ``{"T", "method", "results": [...]}``.

    Two children: the first measures RSS for every variant with oneDNN off (oneDNN's CPU
    allocator is a BFC pool that keeps freed memory, hiding a second call's peak from RSS);
    the second, with TensorFlow's default allocator, reads TensorFlow's own allocator peak
    (``get_memory_info``, which sees TensorFlow's allocations only) for the TF variants.
    """
    rss = _run_child({"T": T, "variants": variants, "method": "rss", "problem": problem},
                     {"TF_ENABLE_ONEDNN_OPTS": "0"}, timeout_s)
    method = ("peak RSS growth of one gradient call: VmHWM (reset through /proc/self/clear_refs) "
              "minus the RSS before the call, in a fresh subprocess with TF_ENABLE_ONEDNN_OPTS=0 "
              "and malloc's mmap threshold at 64 KiB")
    if rss["method"] != "rss":
        method = rss["method"]
    tf_variants = [v for v in variants if not v.startswith("jax")]
    if not allocator_stats:
        rss["method"] = method
        return rss
    try:
        stats = _run_child({"T": T, "variants": tf_variants, "method": "tf", "problem": problem}, {}, timeout_s)
        by_impl = {r["impl"]: r for r in stats["results"]}
        for r in rss["results"]:
            s = by_impl.get(r["impl"])
            if s and s.get("status") == "ok":
                r["tf_allocator_peak"] = s["value"]
        if any("tf_allocator_peak" in r for r in rss["results"]):
            method += ("; for TensorFlow implementations also TensorFlow's allocator peak from "
                       "tf.config.experimental.get_memory_info('CPU:0') minus the bytes in use before "
                       "the call (default allocator, oneDNN on; it sees TensorFlow's allocations only, "
                       "so it is not comparable with JAX's)")
    except Exception as e:  # noqa: BLE001 - the RSS numbers stand on their own
        method += f"; get_memory_info run failed: {e}"
    rss["method"] = method
    return rss


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
