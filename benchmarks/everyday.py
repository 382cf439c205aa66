"""``python -m benchmarks.everyday``: the everyday patterns, side by side in one process.

Rows (each the median of ``--repeats`` runs; ratios are to the row's reference, measured
in the same process, interleaved):

* **closure** — an eager ``GradientTape`` training loop of an HMM forward pass (K=5,
  T=300): per-iteration time when the step closes over ``log_A`` recomputed each
  iteration, against the same loop whose step computes ``log_A`` from the variable
  itself; and the number of cached programs after 2 and after 25 iterations.
* **rewrap-jit / rewrap-grad** — ``tfscan.jit(f)(args)`` and ``tfscan.grad(f)(args)``
  re-wrapped on every call, against a held ``tfscan.jit(f)`` / ``tfscan.grad(f)``.
* **memory per traced graph** — RSS growth (after ``malloc_trim``) per fresh ``tf.function``
  that differentiates a 20-step scan of a 16x16 tanh RNN (``gc.collect()`` between):
  ``tfscan.scan`` and ``tf.scan`` side by side in one process (:data:`SIDE_BY_SIDE`, two
  interleaved blocks of ``--graphs``/2 graphs each, after 10 warm-up graphs each), and
  TensorFlow alone calling a held ``jit_compile=True`` function (the unrolled RNN) from
  each fresh graph (:data:`SOAK`, its own subprocess: the retention ``XlaLaunch`` avoids).
* **memory per sequence length** — RSS growth per new sequence length of a Keras model
  with ``Input((None, 8))`` (``train_on_batch`` + ``predict_on_batch``), after a warm-up
  over 20 lengths spread over 2..256 (run twice: Keras traces a relaxed, None-length graph
  after the first few), for ``tfscan.keras.LSTM`` and ``keras.layers.LSTM``.

* **memory per traced graph through cond / switch / while_loop** — forward, tape gradient
  and Hessian-vector product, against ``tf.cond`` / ``tf.switch_case`` / ``tf.while_loop``
  (:mod:`benchmarks._control_memory`; ``--only-control`` runs these rows alone).

Writes ``benchmarks/results/everyday.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))

from benchmarks._control_memory import control_rows, control_table  # noqa: E402


def _hmm_rows(iters: int) -> dict:
    import tensorflow as tf
    import tfscan
    from tfscan._core import cache as _cache

    obs = tf.random.stateless_normal([300, 5], seed=[1, 2])

    def loop(closure_over_recomputed: bool, n: int) -> tuple[list, list]:
        logits = tf.Variable(tf.random.stateless_normal([5, 5], seed=[3, 4]))
        times, sizes = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            with tf.GradientTape() as tape:
                if closure_over_recomputed:
                    log_a = tf.nn.log_softmax(logits)
                    step = lambda c, x: (tf.reduce_logsumexp(c[:, None] + log_a, 0) + x, None)  # noqa: E731
                else:
                    step = lambda c, x: (tf.reduce_logsumexp(  # noqa: E731
                        c[:, None] + tf.nn.log_softmax(logits), 0) + x, None)
                loss = tf.reduce_logsumexp(tfscan.scan(step, tf.zeros([5]), obs)[0])
            logits.assign_sub(0.01 * tape.gradient(loss, logits))
            times.append(time.perf_counter() - t0)
            sizes.append(len(_cache.eager_cache("scan")))
        return times, sizes

    loop(True, 2), loop(False, 2)  # compile both
    closure_t, reads_t = [], []
    for _ in range(3):  # interleaved
        t, sizes = loop(True, iters)
        closure_t += t[2:]
        r, _ = loop(False, iters)
        reads_t += r[2:]
    c, r = statistics.median(closure_t), statistics.median(reads_t)
    return {"closure_ms": c * 1e3, "reads_variable_ms": r * 1e3, "ratio": c / r,
            "cache_after_2": sizes[1], "cache_after_25": sizes[min(24, len(sizes) - 1)]}


def _rewrap_rows(calls: int) -> dict:
    import tensorflow as tf
    import tfscan

    def f(w, xs):
        return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.tanh(w * c + x), c), tf.zeros([8]), xs)[1])

    w, xs = tf.ones([8]), tf.random.stateless_normal([100, 8], seed=[5, 6])
    held_jit, held_grad = tfscan.jit(f), tfscan.grad(f)
    out = {}
    for name, held, fresh in [("jit", lambda: held_jit(w, xs), lambda: tfscan.jit(f)(w, xs)),
                              ("grad", lambda: held_grad(w, xs), lambda: tfscan.grad(f)(w, xs))]:
        held(), fresh()
        h, r = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            held()
            h.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fresh()
            r.append(time.perf_counter() - t0)
        out[name] = {"held_ms": statistics.median(h) * 1e3, "rewrapped_ms": statistics.median(r) * 1e3,
                     "ratio": statistics.median(r) / statistics.median(h)}
    return out


# The workload of the "memory per traced graph" rows: ``one()`` traces and runs a fresh
# ``tf.function`` differentiating a 20-step scan of a 16x16 tanh RNN with the global ``impl``.
_SOAK_SETUP = textwrap.dedent("""
    import ctypes, gc, os, sys, tensorflow as tf, tfscan
    W = tf.Variable(tf.random.stateless_normal([16, 16], seed=[1, 2]) * 0.3)
    xs = tf.random.stateless_normal([20, 16], seed=[3, 4])

    def rss():  # resident MiB, after returning freed heap pages to the system (less noise)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def one():
        if "@a" in impl:  # the step closes over the function's own argument (a tensor of its graph)
            return closing_over_argument()

        @tf.function
        def g(xs):
            with tf.GradientTape() as t:
                if impl == "tfscan":
                    h, _ = tfscan.scan(lambda h, x: (tf.tanh(tf.linalg.matvec(W, h) + x), None), tf.zeros([16]), xs)
                elif impl == "tf.scan":
                    h = tf.scan(lambda h, x: tf.tanh(tf.linalg.matvec(W, h) + x), xs, tf.zeros([16]))[-1]
                else:  # TensorFlow alone: a held jit_compile tf.function called from each fresh graph
                    h = unrolled(xs)
                loss = tf.reduce_sum(h)
            return t.gradient(loss, W)
        return g(xs)

    def closing_over_argument():  # impl "tfscan@a"/"tf.scan@a": first order; "...@a2": second
        def loss(a):
            if impl.startswith("tfscan"):
                return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a) + x[0], c), a, xs)[1])
            return tf.reduce_sum(tf.scan(lambda c, x: tf.sin(c * a) + x[0], xs, initializer=a))

        @tf.function
        def g(a):
            with tf.GradientTape() as outer, tf.GradientTape() as inner:  # the inner one's gradient recorded
                outer.watch(a)
                inner.watch(a)
                d = inner.gradient(loss(a), a)
            return outer.gradient(d, a) if impl.endswith("@a2") else d
        return g(tf.constant(0.7))

    @tf.function(jit_compile=True)
    def unrolled(xs):
        h = tf.zeros([16])
        for i in range(20):
            h = tf.tanh(tf.linalg.matvec(W, h) + xs[i])
        return h
""")

SOAK = _SOAK_SETUP + textwrap.dedent("""
    impl, n = sys.argv[1], int(sys.argv[2])
    for _ in range(20):
        one()
    gc.collect()
    r0 = rss()
    for _ in range(n):
        one()
        gc.collect()
    print("KIB", (rss() - r0) * 1024 / n)
""")

# ``SOAK`` (``python -c SOAK IMPL N``) prints the RSS growth per traced graph of one implementation.

SIDE_BY_SIDE = _SOAK_SETUP + textwrap.dedent("""
    n, rounds, impls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    for _ in range(10):  # warm-up
        for impl in impls:
            one()
    gc.collect()
    grown = dict.fromkeys(impls, 0.0)
    for r in range(rounds):  # interleaved blocks of n graphs, the order alternating
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            r0 = rss()
            for _ in range(n):
                one()
                gc.collect()
            grown[impl] += rss() - r0
    print("KIB", " ".join(f"{k}={v * 1024 / (n * rounds):.1f}" for k, v in grown.items()))
""")

# ``SIDE_BY_SIDE`` (``python -c SIDE_BY_SIDE N ROUNDS IMPL...``) prints the RSS growth per traced
# graph of each implementation measured in one process: ``ROUNDS`` interleaved blocks of ``N``
# graphs each (tests use it too).


def side_by_side(n: int, rounds: int, impls: tuple = ("tfscan", "tf.scan")) -> dict:
    """``{impl: KiB}`` per traced graph, measured side by side in one fresh subprocess."""
    proc = subprocess.run([sys.executable, "-c", SIDE_BY_SIDE, str(n), str(rounds), *impls], capture_output=True,
                          text=True, timeout=3600, cwd=os.path.dirname(HERE))
    if "KIB" not in proc.stdout:
        raise RuntimeError(proc.stderr[-3000:])
    return {k: float(v) for k, v in (kv.split("=") for kv in proc.stdout.split("KIB")[1].split())}

KERAS_SOAK = textwrap.dedent("""
    import ctypes, gc, os, sys
    import numpy as np, keras, tensorflow as tf, tfscan.keras
    impl, n = sys.argv[1], int(sys.argv[2])
    jit = {"auto": "auto", "on": True, "off": False}[sys.argv[3] if len(sys.argv) > 3 else "auto"]
    # impl "none": no recurrent layer (the floor of Keras and TensorFlow's own per-shape state)
    layers = {"tfscan": lambda: [tfscan.keras.LSTM(16)], "keras": lambda: [keras.layers.LSTM(16)],
              "none": lambda: [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(16, "tanh")]}[impl]()
    model = keras.Sequential([keras.Input((None, 8)), *layers, keras.layers.Dense(1)])
    model.compile("adam", "mse", jit_compile=jit)
    rng = np.random.default_rng(0)

    def rss():  # resident MiB, after returning freed heap pages to the system (less noise)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def one(t):
        x, y = rng.standard_normal((4, t, 8)).astype("float32"), rng.standard_normal((4, 1)).astype("float32")
        model.train_on_batch(x, y)
        model.predict_on_batch(x)

    top = 256  # warm-up: 20 lengths spread over 2..top and 3; then n other lengths in 2..top
    # Length 3: Keras traces its first length (2) at a static shape, then a relaxed (None-length)
    # graph; 3 is the relaxed graph's only warm-up length in the smallest bucket (8, see the
    # README's Known limitations): without it that bucket would compile after the warm-up.
    warm = sorted(set(np.linspace(2, top, 20).astype(int).tolist()) | {3})
    rest = [t for t in range(2, top + 1) if t not in warm]
    lengths = [rest[i] for i in np.linspace(0, len(rest) - 1, n).astype(int)]
    for t in warm + warm:  # twice: Keras traces a relaxed (None-length) graph after the first few
        one(t)
    gc.collect()
    r0 = rss()
    for i, t in enumerate(lengths):
        one(t)
        gc.collect()
        if i == n // 2 - 1:
            r1 = rss()
    r2 = rss()
    print("KIB", (r2 - r0) * 1024 / n, "HALVES", (r1 - r0) * 1024 / (n // 2), (r2 - r1) * 1024 / (n - n // 2))
""")

# ``KERAS_SOAK`` (``python -c KERAS_SOAK IMPL N [JIT]``, IMPL ``tfscan``, ``keras`` or ``none`` (no
# recurrent layer: global average pooling and a Dense(16) instead), JIT ``auto`` (Keras' default:
# off for these models on CPU), ``on`` or ``off``) prints the RSS growth per new sequence length of
# a Keras model with ``Input((None, 8))`` and an LSTM layer, then over the first and the second
# half of the lengths.


def _soak(script: str, impl: str, n: int, *extra: str) -> float | None:
    proc = subprocess.run([sys.executable, "-c", script, impl, str(n), *extra], capture_output=True, text=True,
                          timeout=3600, cwd=os.path.dirname(HERE))
    return float(proc.stdout.split("KIB")[1].split()[0]) if "KIB" in proc.stdout else None


def _memory_rows(graphs: int, lengths: int, repeats: int) -> dict:
    """Medians over ``repeats`` fresh subprocesses per implementation (interleaved)."""
    runs: dict = {"tfscan": [], "tf.scan": [], "xla-call": [], "keras-tfscan": [], "keras-LSTM": [],
                  "keras-no-rnn": []}
    for _ in range(repeats):
        for impl, kib in side_by_side(max(1, graphs // 2), 2).items():  # tfscan and tf.scan in one process
            runs[impl].append(kib)
        runs["xla-call"].append(_soak(SOAK, "xla-call", graphs))
        runs["keras-tfscan"].append(_soak(KERAS_SOAK, "tfscan", lengths))
        runs["keras-LSTM"].append(_soak(KERAS_SOAK, "keras", lengths))
        runs["keras-no-rnn"].append(_soak(KERAS_SOAK, "none", lengths))
    return {k: statistics.median([v for v in vs if v is not None] or [float("nan")]) for k, vs in runs.items()} | {
        "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.everyday", description=__doc__)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--graphs", type=int, default=300)
    p.add_argument("--lengths", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="subprocesses per memory row (median)")
    p.add_argument("--control-graphs", type=int, default=200, help="graphs per implementation, control rows")
    p.add_argument("--only-control", action="store_true", help="only the cond/switch/while_loop memory rows")
    p.add_argument("--out", default=os.path.join(HERE, "results", "everyday.json"))
    args = p.parse_args(argv)
    if args.only_control:
        rows = control_rows(args.control_graphs)
        with open(os.path.join(HERE, "results", "everyday-control.json"), "w") as f:
            json.dump({"rows": rows, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": os.getloadavg()}, f, indent=1)
        print(control_table(rows))
        print(f"\nload average {os.getloadavg()}", file=sys.stderr)
        return 0
    result = {"hmm": _hmm_rows(args.iters), "rewrap": _rewrap_rows(args.calls),
              "memory_kib_per_graph": _memory_rows(args.graphs, args.lengths, args.repeats),
              "control_kib_per_graph": control_rows(args.control_graphs),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    h, rw, m = result["hmm"], result["rewrap"], result["memory_kib_per_graph"]
    print("| workload | tfscan | reference | ratio |\n|---|---|---|---|")
    print(f"| eager tape loop, step closes over recomputed `log_A` (HMM K=5, T=300) | {h['closure_ms']:.2f} ms/iter "
          f"| step reads the variable: {h['reads_variable_ms']:.2f} ms | {h['ratio']:.2f}x |")
    print(f"| cached programs after 2 / 25 iterations | {h['cache_after_2']} / {h['cache_after_25']} | | |")
    for name in ("jit", "grad"):
        print(f"| `tfscan.{name}(f)(args)` re-wrapped per call | {rw[name]['rewrapped_ms']:.2f} ms | held "
              f"`tfscan.{name}(f)`: {rw[name]['held_ms']:.2f} ms | {rw[name]['ratio']:.2f}x |")
    print(f"| memory per traced graph: RSS per fresh `tf.function` (grad of a 20-step scan) | {m['tfscan']:.0f} KiB "
          f"| `tf.scan`: {m['tf.scan']:.0f} KiB; held `jit_compile` function: {m['xla-call']:.0f} KiB | |")
    print(f"| memory per new sequence length, Keras `Input((None, 8))` + LSTM(16), train + predict | "
          f"{m['keras-tfscan']:.0f} KiB | `keras.layers.LSTM`: {m['keras-LSTM']:.0f} KiB; no recurrent layer "
          f"(pooling + Dense): {m['keras-no-rnn']:.0f} KiB | |")
    print("\n" + control_table(result["control_kib_per_graph"]))
    print(f"\nload average {result['load']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
