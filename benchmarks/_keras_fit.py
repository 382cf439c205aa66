"""Workload 7b: Keras ``model.fit`` epochs, a tfscan layer vs Keras's own (issue 14, item 3).

``Input((T, 64)) -> LSTM/GRU(128) -> Dense(1, float32)``, MSE, SGD, 512 samples, batch 32,
under each dtype policy (``float32``, ``mixed_bfloat16``, ``mixed_float16``) and under
``tf.distribute.MirroredStrategy`` over two logical CPUs (``float32``). Each configuration
runs in its own subprocess (logical devices must be set before TensorFlow starts), which
first absorbs the process's one-time costs (a tiny Keras fit, a tiny compiled tfscan scan),
then builds both models with the same weights, compares their predictions, times each
model's first epoch (tracing and compiling included) and then alternates steady epochs
between the two models (median reported). ``compile`` in the notes is the first epoch
minus the fastest steady epoch (on a loaded machine a steady epoch varies by tens of
percent, so read compile ratios together with the first epochs themselves); ``CPU`` is
the same difference in process CPU time (every thread, XLA's compiles on tfscan's worker
threads included), which the machine's load hardly moves.

Run one configuration alone: ``python -m benchmarks._keras_fit '{"policy": "mixed_bfloat16",
"layer": "LSTM", "mirrored": false, "T": 100, "N": 512, "epochs": 3}'`` (prints one JSON line;
an optional ``"loop_dtype"`` is passed to tfscan's layer, e.g. ``"bfloat16"`` for the loop in
16-bit arithmetic, tfscan's behaviour before ``loop_dtype`` existed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = [  # (layer, policy, mirrored)
    ("LSTM", "float32", False), ("GRU", "float32", False),
    ("LSTM", "mixed_bfloat16", False), ("GRU", "mixed_bfloat16", False),
    ("LSTM", "mixed_float16", False), ("GRU", "mixed_float16", False),
    ("LSTM", "float32", True), ("GRU", "float32", True),
]
# ``--only`` names of one configuration each (``keras-fit`` runs them all): LSTM and GRU under it.
ROWS = {"keras-fit-float32": ("float32", False), "keras-fit-bf16": ("mixed_bfloat16", False),
        "keras-fit-f16": ("mixed_float16", False), "keras-fit-mirrored": ("float32", True)}
SIZES = {"full": dict(T=100, N=512, epochs=5), "quick": dict(T=100, N=512, epochs=3),
         "smoke": dict(T=8, N=64, epochs=1)}
TOLERANCE = {"float32": 1e-4, "mixed_bfloat16": 3e-2, "mixed_float16": 5e-3}  # predictions, relative


def config_name(policy: str, mirrored: bool) -> str:
    if mirrored:
        return "MirroredStrategy" + ("" if policy == "float32" else f"+{policy}")
    return policy


def _worker(cfg: dict) -> dict:
    import tensorflow as tf
    if cfg["mirrored"]:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import tfscan.keras

    T, N, B, I, H = cfg["T"], cfg["N"], 32, 64, 128
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, I)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    # One-time costs of the process (TF graph runtime, XLA's first compile) are paid here.
    warm = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    warm.compile("sgd", "mse")
    warm.fit(np.ones((8, 3), "float32"), np.ones((8, 1), "float32"), verbose=0)
    tfscan.scan(lambda c, v: (c + v, c), tf.constant(0.0), tf.ones([3]))
    tf.function(lambda: tfscan.scan(lambda c, v: (c + v, c), tf.constant(0.0), tf.ones([3])))()  # in a graph

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if cfg["mirrored"] else None
    keras.mixed_precision.set_global_policy(cfg["policy"])
    models = {}
    variants = [("keras", keras.layers, {}), ("tfscan", tfscan.keras, {})]
    if cfg.get("loop_dtype"):  # also tfscan's layer with this loop dtype, e.g. the 16-bit loop
        variants.append((f"tfscan[loop_dtype={cfg['loop_dtype']}]", tfscan.keras, {"loop_dtype": cfg["loop_dtype"]}))
    for lib, mod, kw in variants:
        cls = getattr(mod, cfg["layer"])

        def make(cls=cls, kw=kw):
            m = keras.Sequential([keras.Input((T, I)), cls(H, **kw), keras.layers.Dense(1, dtype="float32")])
            m.compile(keras.optimizers.SGD(0.01), "mse")
            return m
        if strategy is not None:
            with strategy.scope():
                models[lib] = make()
        else:
            models[lib] = make()
    ref = models["keras"].predict_on_batch(x[:B])
    errs = {}
    for lib in list(models)[1:]:
        models[lib].set_weights(models["keras"].get_weights())
        got = models[lib].predict_on_batch(x[:B])
        errs[lib] = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-6))

    cpu = {lib: [] for lib in models}  # process CPU time of each epoch (every thread): load-proof

    def epoch(lib):
        t0, c0 = time.perf_counter(), time.process_time()
        models[lib].fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False)
        cpu[lib].append(time.process_time() - c0)
        return time.perf_counter() - t0
    first = {lib: epoch(lib) for lib in models}
    steady = {lib: [] for lib in models}
    order = list(models)
    for i in range(cfg["epochs"]):
        for lib in order[i % len(order):] + order[:i % len(order)]:  # rotated: no model always first
            steady[lib].append(epoch(lib))
    return {"first": first, "steady": steady, "error_rel": errs["tfscan"], "errors": errs,
            "first_cpu": {lib: c[0] for lib, c in cpu.items()}, "steady_cpu": {lib: c[1:] for lib, c in cpu.items()},
            "load": os.getloadavg()[0]}


def selected(only: set | None) -> list | None:
    """The configurations ``--only`` asks for (``None``: none of this workload's names)."""
    if not only or "keras-fit" in only:
        return list(CONFIGS)
    rows = [ROWS[name] for name in ROWS if name in only]
    return [c for c in CONFIGS if (c[1], c[2]) in rows] or None


def run(mode: str, log, configs: list | None = None) -> list[dict]:
    """Records of workload ``keras-fit``: one subprocess per configuration."""
    import statistics
    size = SIZES[mode]
    configs = configs or CONFIGS
    if mode == "smoke":
        configs = [("GRU", "mixed_bfloat16", False)]
    records = []
    for layer, policy, mirrored in configs:
        name = config_name(policy, mirrored)
        cfg = {"layer": layer, "policy": policy, "mirrored": mirrored, **size}
        keys = {lib: f"{lib}.{layer}[{name}]" for lib in ("keras", "tfscan")}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks._keras_fit", json.dumps(cfg)],
                                  capture_output=True, text=True, timeout=1200, env=env,
                                  cwd=os.path.dirname(HERE))
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                                   f"exit code {proc.returncode}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001
            text = " ".join(f"{type(e).__name__}: {e}".split())[:240]
            log(f"  keras-fit {layer} {name}: ERROR {text}")
            records += [{"workload": "keras-fit", "size": size["T"], "impl": k, "metric": "time",
                         "status": "error", "error": text, "note": "error: " + text} for k in keys.values()]
            continue
        wrong = out["error_rel"] > TOLERANCE[policy]
        for lib, key in keys.items():
            med = statistics.median(out["steady"][lib])
            rec = {"workload": "keras-fit", "size": size["T"], "impl": key, "metric": "time",
                   "first_s": out["first"][lib], "median_s": med, "epochs": out["steady"][lib],
                   "min_s": min(out["steady"][lib]),
                   "compile_s": max(out["first"][lib] - min(out["steady"][lib]), 0.0), "load": out["load"]}
            if "first_cpu" in out:  # CPU seconds of the first epoch beyond the cheapest steady one
                rec["compile_cpu_s"] = max(out["first_cpu"][lib] - min(out["steady_cpu"][lib]), 0.0)
            if lib == "tfscan":
                rec["error_rel"] = out["error_rel"]
            if lib == "tfscan" and wrong:
                rec.update(status="wrong", note=f"WRONG: predictions differ from Keras's with the same "
                           f"weights (max relative error {out['error_rel']:.2g})")
            else:
                rec.update(status="ok", value=med, note=f"fastest epoch {rec['min_s']:.2f} s; first epoch "
                           f"{out['first'][lib]:.2f} s (compile {rec['compile_s']:.2f} s)")
            records.append(rec)
        k, t = (next(r for r in records[-2:] if r["impl"] == keys[lib]) for lib in ("keras", "tfscan"))
        if "value" in k and "value" in t:
            t["note"] += (f"; epoch {t['value'] / k['value']:.2f}x Keras's, compile "
                          f"{t['compile_s'] / max(k['compile_s'], 1e-9):.2f}x")
            if "compile_cpu_s" in t:
                t["note"] += (f" (CPU {t['compile_cpu_s']:.2f} s, {t['compile_cpu_s'] / max(k['compile_cpu_s'], 1e-9):.2f}x "
                              f"Keras's {k['compile_cpu_s']:.2f} s)")
        log(f"  keras-fit {layer} {name}: " + ", ".join(
            f"{r['impl']} {r.get('value', float('nan')):.3g} s/epoch (first {r.get('first_s', 0):.3g} s)"
            for r in records[-2:]) + f"; load {out['load']:.1f}")
    return records


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
    sys.stdout.flush()
