"""The workloads: what is scanned, at which sizes, by which implementations.

A *problem* is a step function written twice (TensorFlow and JAX) plus its inputs; a
*workload* is a problem, a measurement (forward, gradient, compile time, call overhead)
and a list of sizes. Sizes depend on the mode: ``full``, ``quick`` (under 3 minutes on
2 cores) and ``smoke`` (tiny, seconds: it only proves the suite runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import types
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import jax
import jax.numpy as jnp

import tfscan
from benchmarks import _impls


# ---------------------------------------------------------------- problems

class CumSum:
    """``c = c + x``, ``y = c``: the lightest possible step."""
    name = "cumsum"
    wrt = ()

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        return {"params": {}, "init": np.float32(0.0),
                "xs": rng.uniform(-1, 1, size=T).astype(np.float32)}

    def tf_step(self, params):
        def step(c, x):
            c = c + x
            return c, c
        return step

    def jax_step(self, params):
        def step(c, x):
            c = c + x
            return c, c
        return step

    def special_forward(self, key: str, data: dict) -> Callable[[], Any]:
        """NumPy's cumsum, and the parallel prefix scans of JAX and tfscan."""
        if key == "numpy":
            xs = data["xs"]

            def run():
                ys = np.cumsum(xs, dtype=np.float32)
                return ys[-1], ys
            return run
        if key == "jax.assoc":
            fn = jax.jit(lambda xs: jax.lax.associative_scan(jnp.add, xs))
            xj = jnp.asarray(data["xs"])

            def run():
                ys = _impls.block(fn(xj))
                return ys[-1], ys
            return run
        xt = tf.constant(data["xs"])

        def run():
            ys = tfscan.associative_scan(tf.add, xt)
            return ys[-1], ys
        return run


def _elman_inputs(rng: np.random.Generator, B: int, I: int, H: int, xs_shape: tuple) -> dict:
    """Elman RNN weights (scaled to keep the state in tanh's range), ``h0`` and ``xs``."""
    f32 = np.float32
    params = {"W_xh": (rng.normal(size=(I, H)) / np.sqrt(I)).astype(f32),
              "W_hh": (rng.normal(size=(H, H)) * 0.9 / np.sqrt(H)).astype(f32),
              "b": (rng.normal(size=H) * 0.1).astype(f32)}
    return {"params": params, "init": (rng.normal(size=(B, H)) * 0.1).astype(f32),
            "xs": rng.normal(size=xs_shape).astype(f32)}


def _jax_elman_step(p):
    W_xh, W_hh, b = p["W_xh"], p["W_hh"], p["b"]

    def step(h, x):
        h = jnp.tanh(h @ W_hh + x @ W_xh + b)
        return h, h
    return step


class Elman:
    """``h = tanh(h @ W_hh + x @ W_xh + b)``, batch 32, input 64, hidden 128: a heavy step."""
    name = "elman"
    wrt = ("params", "init")

    def __init__(self, batch: int = 32, inputs: int = 64, hidden: int = 128):
        self.B, self.I, self.H = batch, inputs, hidden

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        return _elman_inputs(rng, self.B, self.I, self.H, (T, self.B, self.I))

    def tf_step(self, p):
        W_xh, W_hh, b = p["W_xh"], p["W_hh"], p["b"]

        def step(h, x):
            h = tf.tanh(tf.matmul(h, W_hh) + tf.matmul(x, W_xh) + b)
            return h, h
        return step

    def jax_step(self, p):
        return _jax_elman_step(p)

    def hvp_inputs(self, T: int, rng: np.random.Generator) -> dict:
        """The inputs and a direction ``v`` of ``W_hh``'s shape for a Hessian-vector product."""
        data = self.inputs(T, rng)
        data["v"] = rng.standard_normal((self.H, self.H)).astype(np.float32)
        return data

    def tf_loss(self, ys):
        return tf.reduce_sum(ys)

    def jax_loss(self, ys):
        return jnp.sum(ys)


class ElmanFinal(Elman):
    """The Elman step with no per-step output; the loss reads only the final carry ``h_T``.

    Nothing of size ``T`` is produced but the residuals the gradient keeps, so peak memory
    shows each checkpointing policy: ``O(T)`` carries (``remat=False``/``True``,
    ``jax.checkpoint``), ``O(sqrt T)`` (``"sqrt"``) or ``O(log T)`` (``"binomial"``)."""
    name = "elman-final"
    final = True  # _impls.gradient: the loss reads the final carry

    def tf_step(self, p):
        step = super().tf_step(p)
        return lambda h, x: (step(h, x)[0], None)

    def jax_step(self, p):
        step = super().jax_step(p)
        return lambda h, x: (step(h, x)[0], None)


class Light:
    """The scalar recurrence ``c = tanh(a*c + x)``: a light step, all overhead."""
    name = "light"
    wrt = ("params", "xs")

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        return {"params": {"a": np.float32(0.9)}, "init": np.float32(0.0),
                "xs": (rng.normal(size=T) * 0.5).astype(np.float32)}

    def tf_step(self, p):
        a = p["a"]

        def step(c, x):
            c = tf.tanh(a * c + x)
            return c, c
        return step

    def jax_step(self, p):
        a = p["a"]

        def step(c, x):
            c = jnp.tanh(a * c + x)
            return c, c
        return step

    def tf_loss(self, ys):
        return tf.reduce_sum(ys)

    def jax_loss(self, ys):
        return jnp.sum(ys)


class LightParams(Light):
    """The light step, differentiated w.r.t. its parameter ``a`` only (as a Keras training step
    differentiates its weights, never its data): ``d(xs)`` is not asked for."""
    name = "light-params"
    wrt = ("params",)


class LightFresh(Light):
    """The light step with its own code objects, so no earlier trace or compile is reused."""
    name = "light-compile"

    def tf_step(self, p):
        return _fresh_code(super().tf_step(p))

    def jax_step(self, p):
        return _fresh_code(super().jax_step(p))

    @staticmethod
    def _step2(tanh):
        def step(carry, x):  # the parameter rides in the carry: forward mode differentiates it
            c, a = carry
            c = tanh(a * c + x)
            return (c, a), c
        return _fresh_code(step)

    def tf_step2(self):
        return self._step2(tf.tanh)

    def jax_step2(self):
        return self._step2(jnp.tanh)


def _fresh_code(fn):
    """``fn`` with a code object of its own (caches keyed on code see a new function)."""
    code = fn.__code__.replace(co_name="fresh_" + fn.__code__.co_name)
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class VmapElman:
    """One sequence per example: ``h = tanh(h @ W_hh + x @ W_xh + b)``, hidden 32, input 32;
    batch 64 sequences. Per-example functions see ``h0`` of shape (H,) and ``xs`` (T, I)."""
    name = "vmap"

    def __init__(self, batch: int = 64, hidden: int = 32, inputs: int = 32):
        self.B, self.H, self.I = batch, hidden, inputs

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        return _elman_inputs(rng, self.B, self.I, self.H, (self.B, T, self.I))

    @staticmethod
    def tf_step(p):
        W_xh, W_hh, b = p["W_xh"], p["W_hh"], p["b"]

        def step(h, x):  # h: (H,) or (B, H)
            h = tf.tanh(tf.tensordot(h, W_hh, 1) + tf.tensordot(x, W_xh, 1) + b)
            return h, h
        return step

    @staticmethod
    def jax_step(p):
        return _jax_elman_step(p)

    def build(self, key: str, data: dict) -> Callable[[], Any]:
        """``(h_T, hs)`` for the whole batch: ``h_T`` (B, H), ``hs`` (B, T, H)."""
        if key == "jax.vmap":
            def run(params, h0, xs):
                return jax.vmap(lambda h, x: jax.lax.scan(self.jax_step(params), h, x))(h0, xs)
            fn = jax.jit(run)
            args = _impls.jax_data(data)
            return lambda: _impls.block(fn(*args))
        args = _impls.tf_data(data)
        if key in ("tfscan.vmap", "tfscan.jit.vmap"):
            def per_example(params, h0, xs):
                return tfscan.scan(self.tf_step(params), h0, xs)
            batched = tfscan.vmap(per_example, in_axes=(None, 0, 0))
            if key == "tfscan.jit.vmap":
                batched = tfscan.jit(batched)
            return lambda: batched(*args)
        if key.startswith("vectorized_map"):
            inner = _impls.scan_tfscan if key == "vectorized_map.tfscan" else _impls.scan_tf

            def run(params, h0, xs):
                return tf.vectorized_map(lambda a: inner(self.tf_step(params), a[0], a[1]), (h0, xs))
            fn = _impls.wrap_tf(run, "xla" if key.endswith("@xla") else "graph")
            return lambda: fn(*args)
        adapter, where = {"tf.scan.batched": (_impls.scan_tf, "graph"),
                          "tf.scan.batched@xla": (_impls.scan_tf, "xla"),
                          "tfscan.batched": (_impls.scan_tfscan, "eager")}[key]

        def run(params, h0, xs):
            hT, hs = adapter(self.tf_step(params), h0, tf.transpose(xs, [1, 0, 2]))
            return hT, tf.transpose(hs, [1, 0, 2])
        fn = _impls.wrap_tf(run, where)
        return lambda: fn(*args)


class BoundedWhileInference:
    """``tfscan.while_loop(..., max_steps=N)`` run for inference: ``h = tanh(h @ W)`` (B=32,
    H=256) until a step counter reaches ``T`` (every step runs). The bounded loop has a
    reverse mode; this row shows what it costs when no gradient is taken (its
    checkpoints, ``T`` carries, are saved only if one is asked), beside TensorFlow's
    ``tf.while_loop`` and JAX's ``lax.while_loop``, which have none to save."""
    name = "while-infer"

    def __init__(self, batch: int = 32, hidden: int = 256):
        self.B, self.H = batch, hidden

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        W = (rng.normal(size=(self.H, self.H)) * 0.9 / np.sqrt(self.H)).astype(np.float32)
        return {"params": {"W": W}, "init": (rng.normal(size=(self.B, self.H)) * 0.1).astype(np.float32),
                "xs": np.float32(0.0), "T": T}

    def build(self, key: str, data: dict) -> Callable[[], Any]:
        T = data["T"]
        if key == "jax.while":
            W = jnp.asarray(data["params"]["W"])
            fn = jax.jit(lambda h: jax.lax.while_loop(lambda c: c[1] < T,
                                                      lambda c: (jnp.tanh(c[0] @ W), c[1] + 1), (h, 0))[0])
            h0 = jnp.asarray(data["init"])
            return lambda: _impls.block(fn(h0))
        W, h0 = tf.constant(data["params"]["W"]), tf.constant(data["init"])
        name, _, where = key.partition("@")
        if name == "tfscan.while":
            def run(h):
                return tfscan.while_loop(lambda c: c[1] < T, lambda c: (tf.tanh(c[0] @ W), c[1] + 1), (h, 0),
                                         max_steps=T)[0]
        else:
            def run(h):
                return tf.while_loop(lambda h, i: i < T, lambda h, i: (tf.tanh(h @ W), i + 1), (h, 0),
                                     maximum_iterations=T)[0]
        fn = _impls.wrap_tf(run, where or "eager")
        return lambda: fn(h0)


class PortedTrainStep:
    """Issue 14's ported JAX program: ``jit(value_and_grad(mean(vmap(scan loss))))``.

    A per-sequence RNN regression loss (hidden 8, input 3, one target per step, as in
    ``notebooks/06_porting_from_jax``), batched with ``vmap``, differentiated w.r.t. the
    parameters and compiled; B=16 sequences at T <= 50, 64 beyond. The JAX program and its
    tfscan translation (names swapped) are measured next to the same loss batched by hand."""
    name = "port"
    wrt = ("params",)
    I, H = 3, 8

    @staticmethod
    def batch(T: int) -> int:
        return 16 if T <= 50 else 64

    def inputs(self, T: int, rng: np.random.Generator) -> dict:
        B, f32 = self.batch(T), np.float32
        params = {"W": (rng.normal(size=(self.H, self.H)) * 0.3).astype(f32),
                  "U": (rng.normal(size=(self.I, self.H)) * 0.3).astype(f32),
                  "V": (rng.normal(size=(self.H, 1)) * 0.3).astype(f32)}
        return {"params": params, "init": np.zeros(0, f32),
                "xs": {"x": rng.normal(size=(B, T, self.I)).astype(f32),
                       "y": rng.normal(size=(B, T, 1)).astype(f32)}}

    def build(self, key: str, data: dict) -> Callable[[], Any]:
        """``(loss, grads)`` of the batch."""
        H = self.H
        if key == "jax":
            def loss_one(p, xs, ys):
                def step(h, xy):
                    x, y = xy
                    h = jnp.tanh(h @ p["W"] + x @ p["U"])
                    return h, jnp.sum((h @ p["V"] - y) ** 2)
                return jnp.mean(jax.lax.scan(step, jnp.zeros(H), (xs, ys))[1])

            @jax.jit
            def train(p, xs, ys):
                return jax.value_and_grad(
                    lambda p: jnp.mean(jax.vmap(loss_one, in_axes=(None, 0, 0))(p, xs, ys)))(p)
            p = jax.tree_util.tree_map(jnp.asarray, data["params"])
            xs, ys = jnp.asarray(data["xs"]["x"]), jnp.asarray(data["xs"]["y"])
            return lambda: _impls.block(train(p, xs, ys))

        def vecmat(v, M):  # jnp's v @ M for a vector (or a batch of rows) v
            return tf.matmul(v, M) if v.shape.rank == 2 else tf.linalg.matvec(M, v, transpose_a=True)

        def step_of(p):
            def step(h, xy):
                x, y = xy
                h = tf.tanh(vecmat(h, p["W"]) + vecmat(x, p["U"]))
                return h, tf.reduce_sum((vecmat(h, p["V"]) - y) ** 2, axis=-1)
            return step

        if key == "tfscan.jit":  # the port: names swapped
            def loss_one(p, xs, ys):
                return tf.reduce_mean(tfscan.scan(step_of(p), tf.zeros(H), (xs, ys))[1])

            @tfscan.jit
            def train(p, xs, ys):
                return tfscan.value_and_grad(
                    lambda p: tf.reduce_mean(tfscan.vmap(loss_one, in_axes=(None, 0, 0))(p, xs, ys)))(p)
        else:  # "tfscan.batched": the batch carried through one scan by hand
            @tfscan.jit
            def train(p, xs, ys):
                def loss(p):
                    B = tf.shape(xs)[0]
                    seq = (tf.transpose(xs, [1, 0, 2]), tf.transpose(ys, [1, 0, 2]))
                    _, errs = tfscan.scan(step_of(p), tf.zeros([B, H]), seq)
                    return tf.reduce_mean(errs)
                return tfscan.value_and_grad(loss)(p)
        p = {k: tf.constant(v) for k, v in data["params"].items()}
        xs, ys = tf.constant(data["xs"]["x"]), tf.constant(data["xs"]["y"])
        return lambda: train(p, xs, ys)


# ---------------------------------------------------------------- workloads

FWD_IMPLS = ["jax", "tfscan", "tfscan@graph", "tfscan@xla", "tfscan.jit", "tf.scan", "tf.scan@xla", "keras", "keras@xla", "while@xla"]
GRAD_IMPLS = ["jax", "tfscan", "tfscan@xla", "tfscan.grad", "tf.scan", "tf.scan@xla", "keras", "keras@xla", "while@xla"]


@dataclass
class Workload:
    key: str
    title: str
    measure: str                 # "time" (steady call) or "compile" (first minus steady)
    kind: str                    # "forward", "gradient", "vmap", "overhead"
    sizes: list
    impls: list
    build: Callable[[str, dict], Callable[[], Any]]
    inputs: Callable[[int, np.random.Generator], dict]
    tol: float = 1e-4            # max relative error against the reference
    per_step: bool = True        # report ns per step
    requires: dict = field(default_factory=dict)  # impl -> tfscan attribute it needs
    note: str = ""
    budget_s: float | None = None  # overrides the mode's series budget and first-call limit


SIZES = {
    "full": {"cumsum": [10**3, 10**4, 10**5, 10**6],
             "elman": [250, 500, 1000, 2000, 4000, 8000],
             "light": [10**3, 10**4, 10**5, 10**6],
             "vmap": [1000], "port": [50, 500], "compile": [10**2, 10**3, 10**4, 10**5], "overhead": [10],
             "light-params": [10**4, 10**5], "compile-jvp2": [10**2, 10**3], "hvp": [100, 1000], "memory": 8000, "keras": [100, 1000], "final": [2000, 20000], "while": [200, 2000]},
    "quick": {"cumsum": [10**3, 10**4, 10**5, 10**6],
              "elman": [250, 500, 1000, 2000],
              "light": [10**3, 10**4, 10**5],
              "vmap": [1000], "port": [50, 500], "compile": [10**2, 10**3, 10**4, 10**5], "overhead": [10],
              "light-params": [10**4], "compile-jvp2": [10**2], "hvp": [500], "memory": 2000, "keras": [100], "final": [2000, 20000], "while": [200, 2000]},
    "smoke": {"cumsum": [20], "elman": [10], "light": [20], "vmap": [10], "port": [10], "light-params": [20],
              "compile": [10, 20], "overhead": [10], "compile-jvp2": [10], "hvp": [10], "memory": 20, "keras": [8],
              "final": [20], "while": [10]},
}


def workloads(mode: str) -> list[Workload]:
    s = SIZES[mode]
    cumsum, elman, light, fresh, final = CumSum(), Elman(), Light(), LightFresh(), ElmanFinal()
    light_params = LightParams()
    vm, port, bounded = VmapElman(), PortedTrainStep(), BoundedWhileInference()
    fwd = lambda p: (lambda key, data: _impls.forward(key, p, data))  # noqa: E731
    grad = lambda p: (lambda key, data: _impls.gradient(key, p, data))  # noqa: E731
    return [
        Workload("cumsum", "1. Cumulative sum, forward", "time", "forward", s["cumsum"],
                 FWD_IMPLS + ["numpy", "jax.assoc", "tfscan.assoc"], fwd(cumsum), cumsum.inputs,
                 tol=1e-4, requires={"tfscan.assoc": ("associative_scan",), "tfscan.jit": ("jit",)}),
        Workload("elman-fwd", "2. Elman RNN (B=32, I=64, H=128), forward", "time", "forward",
                 s["elman"], FWD_IMPLS, fwd(elman), elman.inputs, tol=1e-4,
                 requires={"tfscan.jit": ("jit",)}),
        Workload("elman-grad", "2. Elman RNN (B=32, I=64, H=128), gradient of sum(hs) w.r.t. "
                 "params and h0", "time", "gradient", s["elman"], GRAD_IMPLS, grad(elman),
                 elman.inputs, tol=1e-3, requires={"tfscan.grad": ("grad",)}),
        Workload("light-fwd", "2b. Light step c = tanh(a*c + x), forward", "time", "forward",
                 s["light"], FWD_IMPLS, fwd(light), light.inputs, tol=1e-4,
                 requires={"tfscan.jit": ("jit",)}),
        Workload("light-grad", "2b. Light step c = tanh(a*c + x), gradient w.r.t. a and xs",
                 "time", "gradient", s["light"], GRAD_IMPLS, grad(light), light.inputs, tol=1e-3,
                 requires={"tfscan.grad": ("grad",)}),
        Workload("light-grad-params", "2c. Light step c = tanh(a*c + x), tape gradient w.r.t. a only "
                 "(xs not asked for, as in a Keras step); issue 14's goal: tfscan@graph within 1.5x JAX",
                 "time", "gradient", s["light-params"],
                 ["jax", "tfscan", "tfscan@graph", "tfscan@xla", "tfscan.grad", "tf.scan", "tf.scan@xla", "keras",
                  "tf.function.empty", "handwritten@xla"],
                 grad(light_params), light_params.inputs, tol=1e-3, requires={"tfscan.grad": ("grad",)}),
        Workload("elman-grad-around", "2e. Elman RNN (B=32, I=64, H=128), gradient of sum(hs) w.r.t. params "
                 "and h0 by a tape around the model's function (its weights tf.Variables); ~around: the tape "
                 "outside the call, else inside", "time", "gradient", s["elman"],
                 ["jax", "tfscan@graph~around", "tfscan@xla~around", "tfscan@graph", "tfscan@xla", "tf.scan~around"],
                 grad(elman), elman.inputs, tol=1e-3),
        Workload("elman-hvp", "2d. Elman RNN (B=32, I=64, H=128), Hessian-vector product of sum(hs) "
                 "w.r.t. W_hh (forward over reverse: jax.jvp of jax.grad; an accumulator around a tape)",
                 "time", "hvp", s["hvp"], ["jax", "tfscan", "tfscan@graph", "tfscan@xla", "tf.scan", "tf.scan@xla"],
                 lambda key, data: _impls.hvp(key, elman, data), elman.hvp_inputs, tol=1e-3, budget_s=20.0),
        Workload("vmap", "3. vmap of a scan (B=64, H=32, I=32)", "time", "vmap", s["vmap"],
                 ["jax.vmap", "tfscan.vmap", "tfscan.jit.vmap", "tfscan.batched", "tf.scan.batched",
                  "tf.scan.batched@xla", "vectorized_map", "vectorized_map@xla",
                  "vectorized_map.tfscan"],
                 vm.build, vm.inputs, tol=1e-4,
                 requires={"tfscan.vmap": ("vmap",), "tfscan.jit.vmap": ("vmap", "jit")}),
        Workload("port", "3b. A ported JAX train step: jit(value_and_grad(mean(vmap(scan loss)))), "
                 "H=8, I=3, B=16 (T=50) / 64 (T=500)", "time", "train", s["port"],
                 ["jax", "tfscan.jit", "tfscan.batched"], port.build, port.inputs, tol=1e-4,
                 per_step=False, budget_s=20.0, requires={"tfscan.jit": ("vmap", "jit", "value_and_grad"),
                                           "tfscan.batched": ("jit", "value_and_grad")},
                 note="The first call (trace + compile + one run) of each is in the results JSON "
                      "(first_s); issue 14's goals: per call <= 1.0x JAX, first call <= 2x JAX's."),
        Workload("compile-fwd", "4. Compile time vs T (first call minus steady call), light step, "
                 "forward", "compile", "forward", s["compile"],
                 ["jax", "tfscan", "tfscan@xla", "tfscan.jit", "tf.scan@xla", "keras@xla", "while@xla"],
                 fwd(fresh), fresh.inputs, tol=1e-4, per_step=False),
        Workload("compile-grad", "4. Compile time vs T (first call minus steady call), light step, "
                 "gradient", "compile", "gradient", s["compile"],
                 ["jax", "tfscan", "tfscan@xla", "tfscan.grad", "tf.scan@xla", "while@xla"],
                 grad(fresh), fresh.inputs, tol=1e-3, per_step=False, requires={"tfscan.grad": ("grad",)}),
        Workload("compile-jvp2", "4b. Compile time vs T (first call minus steady call), light step, "
                 "second-order forward mode (a JVP of a JVP; goal: within 3x JAX)", "compile", "jvp2",
                 s["compile-jvp2"], ["jax", "tfscan"],
                 lambda key, data: _impls.jvp2(key, fresh, data), fresh.inputs, tol=1e-3, per_step=False),
        Workload("overhead", "5. Call overhead: light step, T=10, called from eager code", "time",
                 "overhead", s["overhead"],
                 ["jax.nojit", "jax", "tfscan", "tfscan.jit", "tf.call@xla", "tf.scan.eager", "tf.scan",
                  "tf.scan@xla", "keras.eager", "keras"],
                 lambda key, data: _impls.forward_fixed_step(key, light, data), light.inputs,
                 tol=1e-5, per_step=False),
        Workload("while-infer", "9. Bounded while loop (while_loop(max_steps=T), which has a reverse mode), "
                 "inference: h = tanh(h @ W), B=32, H=256, T steps run", "time", "forward", s["while"],
                 ["jax.while", "tfscan.while", "tfscan.while@graph", "tfscan.while@xla", "tf.while_loop",
                  "tf.while_loop@graph", "tf.while_loop@xla"], bounded.build, bounded.inputs, tol=1e-4),
        Workload("final-grad", "8. Checkpointing: Elman RNN gradient of sum(h_T) (final carry only) "
                 "w.r.t. params and h0, per remat policy", "time", "remat", s["final"], FINAL_IMPLS,
                 grad(final), final.inputs, tol=1e-3, budget_s=60.0),
    ]


FINAL_IMPLS = ["jax", "jax.checkpoint", "tfscan[remat=False]", "tfscan[remat=True]", "tfscan[remat=sqrt]",
               "tfscan[remat=binomial]"]
# Peak memory on the same workload: also JAX's policy that keeps the matmuls, and tf.scan.
FINAL_MEMORY_IMPLS = FINAL_IMPLS[:2] + ["jax.checkpoint[dots_saveable]", "jax.checkpoint[every=sqrt]", "tf.scan"] + \
    FINAL_IMPLS[2:] + ["tfscan[remat=True]@xla", "tfscan[remat=sqrt]@xla"]


REQUIRES = {"tfscan.jit": ("jit",), "tfscan.grad": ("grad",), "tfscan.vmap": ("vmap",),
            "tfscan.jit.vmap": ("vmap", "jit"), "tfscan.assoc": ("associative_scan",)}


def missing(workload: Workload, key: str) -> list[str]:
    """The tfscan attributes ``key`` needs that do not exist (yet)."""
    need = workload.requires.get(key, REQUIRES.get(key, ()))
    return [a for a in need if not hasattr(tfscan, a)]
