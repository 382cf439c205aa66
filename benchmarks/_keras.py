"""Workloads 7 and 7c: one Keras training step (``train_on_batch``) and one inference call
(``predict_on_batch``), a tfscan layer vs Keras's own.

Runs only when tfscan ships Keras layers: ``tfscan.keras`` (or ``tfscan.layers``) with a
``SimpleRNN`` and/or ``LSTM`` class that takes ``units`` like Keras's. The model is
``Input((T, 64)) -> RNN(128) -> Dense(1)``, MSE loss, SGD, batch 32. When the tfscan layer's
weights have the shapes of Keras's, they are copied over and the forward outputs are
compared before timing; otherwise the row says it was not value-checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tfscan

LAYER_NAMES = ("SimpleRNN", "LSTM")


def tfscan_layers() -> tuple[Any, dict]:
    """``(module, {name: class})`` of tfscan's Keras layers, or ``(None, {})``."""
    for attr in ("keras", "layers"):
        mod = getattr(tfscan, attr, None)
        if mod is None:
            continue
        found = {n: getattr(mod, n) for n in LAYER_NAMES if isinstance(getattr(mod, n, None), type)}
        if found:
            return mod, found
    return None, {}


def _model(layer_cls, T: int, I: int, H: int, jit: bool):
    import keras
    model = keras.Sequential([keras.Input((T, I)), layer_cls(H), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit)
    return model


def build(key: str, data: dict, T: int, state: dict, what: str = "train"):
    """``key`` is e.g. ``keras.SimpleRNN``, ``tfscan.SimpleRNN@xla``; ``what``: ``"train"``
    (a ``train_on_batch`` step) or ``"predict"`` (``predict_on_batch``: Keras' predict
    function, a ``tf.function`` with no tape, as served inference runs)."""
    import keras
    name, _, where = key.partition("@")
    lib, cls_name = name.split(".")
    _, found = tfscan_layers()
    cls = getattr(keras.layers, cls_name) if lib == "keras" else found[cls_name]
    keras.utils.set_random_seed(0)
    model = _model(cls, T, data["x"].shape[-1], data["H"], where == "xla")
    ref = state.get(("weights", cls_name))
    if lib == "keras" and ref is None:
        state[("weights", cls_name)] = model.get_weights()
    elif ref is not None:
        try:
            model.set_weights(ref)
            state["copied", key] = True
        except Exception:  # noqa: BLE001 - a different weight layout: not value-checked
            state["copied", key] = False
    x, y = data["x"], data["y"]

    def step():
        return model.train_on_batch(x, y) if what == "train" else model.predict_on_batch(x)
    # The value check compares predictions with copied weights (before any training step).
    pred = model(x, training=False)
    return step, np.asarray(pred)


def inputs(T: int, rng: np.random.Generator, B: int = 32, I: int = 64, H: int = 128) -> dict:
    return {"x": rng.normal(size=(B, T, I)).astype(np.float32),
            "y": rng.normal(size=(B, 1)).astype(np.float32), "H": H}


WORKLOADS = {"train": "keras", "predict": "keras-predict"}  # what -> workload key


def run(sizes: list, settings, log, what: str = "train") -> tuple[list[dict], str]:
    """Records for workload ``keras`` (``what="train"``) or ``keras-predict``, and a note when
    it cannot run."""
    import dataclasses
    from benchmarks import _timing
    # A Keras train step's first call traces Keras's train function and compiles: seconds,
    # not an over-budget series. Only a first call over 30 s stops the row.
    settings = dataclasses.replace(settings, abort_first_s=max(settings.abort_first_s, 30.0))
    mod, found = tfscan_layers()
    if not found:
        return [], "not available yet: tfscan has no Keras layers (tfscan.keras.SimpleRNN / LSTM)"
    records = []
    for T in sizes:
        data = inputs(T, np.random.default_rng(0))
        state: dict = {}
        for cls_name in found:
            ref_pred = None
            for key in (f"keras.{cls_name}", f"keras.{cls_name}@xla",
                        f"tfscan.{cls_name}", f"tfscan.{cls_name}@xla"):
                rec = {"workload": WORKLOADS[what], "size": T, "impl": key, "metric": "time"}
                records.append(rec)
                try:
                    step, pred = build(key, data, T, state, what)
                    if ref_pred is None:
                        ref_pred = pred
                    elif state.get(("copied", key)):
                        err = float(np.max(np.abs(pred - ref_pred)) / max(np.max(np.abs(ref_pred)), 1e-6))
                        rec["error_rel"] = err
                        if err > 1e-4:
                            rec.update(status="wrong", note=f"WRONG: outputs differ from Keras's "
                                       f"with the same weights (max relative error {err:.2g}); not timed")
                            continue
                    elif key.startswith("tfscan"):
                        rec["note"] = "not value-checked (weights not interchangeable with Keras's)"
                    timing = _timing.measure(step, settings)
                    if timing.aborted:
                        rec.update(status="over budget", first_s=timing.first_s,
                                   note=f"over budget: the first call took {timing.first_s:.3g} s; not timed")
                        log(f"  {WORKLOADS[what]} T={T} {key}: first call {timing.first_s:.3g} s: over budget")
                        continue
                except Exception as e:  # noqa: BLE001
                    text = " ".join(f"{type(e).__name__}: {e}".split())[:240]
                    rec.update(status="error", error=text, note="error: " + text)
                    log(f"  {WORKLOADS[what]} T={T} {key}: ERROR {text}")
                    continue
                rec.update(status="ok", value=timing.median_s, first_s=timing.first_s,
                           median_s=timing.median_s, reps=timing.reps, inner=timing.inner,
                           per_step_ns=timing.median_s / T * 1e9)
                log(f"  {WORKLOADS[what]} T={T} {key}: {timing.median_s * 1e3:.4g} ms")
    return records, ""
