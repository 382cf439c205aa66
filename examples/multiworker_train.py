"""Train a model with a tfscan layer on several workers (``MultiWorkerMirroredStrategy``),
with a custom loop that survives a worker's death by restarting from its last checkpoint.

Design:

* **One program, any number of workers.** Each worker runs :func:`train` with
  ``TF_CONFIG`` naming the cluster; ``--single`` runs the same loop in one process under
  the default strategy (the reference the workers must match).
* **Deterministic schedule.** The global batch of step ``i`` is drawn by
  ``tf.random.stateless_*`` from ``(seed, i)``, so it does not depend on which worker
  reads it, on how many workers there are, or on where a run was resumed.
  ``experimental_distribute_dataset`` splits each global batch across the replicas, and
  the loss is averaged over the *global* batch, so one step of N workers applies the same
  update as one step of a single process.
* **The step counter lives in the checkpoint** (the optimizer's ``iterations``): a
  restarted job restores model and optimizer from the last ``tf.train.CheckpointManager``
  checkpoint and continues at that step, so no step is lost or applied twice.
* **A dead peer ends the job instead of hanging it.** Collectives have a timeout
  (``CommunicationOptions(timeout_seconds=...)``); when a peer is gone the survivor gets
  a ``tf.errors`` exception from the next all-reduce and exits with code 3. The recovery
  is the one TensorFlow documents for ``MultiWorkerMirroredStrategy``: restart the whole
  job (all workers) and restore the last checkpoint.
* Keras 3's ``model.fit`` does not support ``MultiWorkerMirroredStrategy``
  (keras-team/keras#20585), hence the custom loop: ``strategy.run`` inside a
  ``tf.function``, TensorFlow's documented pattern.

Run two workers on this machine (:func:`launch` picks free ``127.0.0.1`` ports, starts
every worker in its own process group and stops them all on failure)::

    python examples/multiworker_train.py --launch 2 --model lstm --steps 20 \\
        --ckpt-dir /tmp/mw/ckpt --out-dir /tmp/mw/out

or start each worker yourself with its ``TF_CONFIG``::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/multiworker_train.py --model lstm --steps 20 --ckpt-dir ... --out-dir ...

Each worker writes ``<out-dir>/worker<i>.npz`` (final weights ``w0..wK`` and the losses)
and appends one JSON line per step to ``<out-dir>/worker<i>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_LOST = 3  # exit code of a worker whose peer died


# -- the launcher (no TensorFlow needed) ---------------------------------------------------

def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def worker_env(index: int, ports: list[int]) -> dict:
    """The environment of worker ``index`` in a cluster of ``127.0.0.1:<port>`` workers."""
    env = dict(os.environ)
    env.update(
        TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                              "task": {"type": "worker", "index": index}}),
        PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
        CUDA_VISIBLE_DEVICES="")
    return env


def start_workers(n: int, argv: list[str], log_dir: str) -> list[subprocess.Popen]:
    """Start ``n`` workers running this file with ``argv``, each in its own process group;
    stdout/stderr go to ``<log_dir>/worker<i>.stdout``."""
    os.makedirs(log_dir, exist_ok=True)
    ports, procs = free_ports(n), []
    try:
        for i in range(n):
            with open(os.path.join(log_dir, f"worker{i}.stdout"), "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), *argv], env=worker_env(i, ports),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT))
    except BaseException:
        stop_workers(procs)
        raise
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """Kill every worker's process group (by its pid) and reap it."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)


def wait_workers(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Every worker's exit code; raises ``TimeoutError`` (after killing them) past ``timeout`` s."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_workers(procs)
        raise TimeoutError(f"workers still running after {timeout:.0f} s (killed)") from None
    return [p.returncode for p in procs]


def launch(n: int, argv: list[str], log_dir: str, timeout: float = 600) -> list[int]:
    """Run ``n`` workers to completion on free local ports; their exit codes."""
    procs = start_workers(n, argv, log_dir)
    try:
        return wait_workers(procs, timeout)
    finally:
        stop_workers(procs)


# -- the worker ----------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["lstm", "keras_lstm", "scan_rnn"], default="lstm",
                   help="tfscan.keras.LSTM, keras.layers.LSTM (reference), or a custom layer calling tfscan.scan")
    p.add_argument("--steps", type=int, default=8, help="total training steps of the schedule")
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--length", type=int, default=6, help="sequence length")
    p.add_argument("--features", type=int, default=3)
    p.add_argument("--units", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of SGD with momentum 0.9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", default=None, help="checkpoint directory (restored from if it has one)")
    p.add_argument("--ckpt-every", type=int, default=2)
    p.add_argument("--save-keras", action="store_true", help="the chief also writes model-<step>.keras and weights-<step>.npz")
    p.add_argument("--out-dir", required=False, default=None)
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep after each step (to leave time for a kill)")
    p.add_argument("--collective-timeout", type=float, default=60.0, help="seconds before a collective gives up on a peer")
    p.add_argument("--single", action="store_true", help="one process, default strategy (no TF_CONFIG)")
    p.add_argument("--launch", type=int, default=0, metavar="N", help="start N local workers running this program")
    p.add_argument("--timeout", type=float, default=600, help="with --launch: kill the workers after this many seconds")
    return p.parse_args(argv)


def build_model(kind: str, args: argparse.Namespace):
    """The model; its weights are drawn from ``args.seed`` (the same in every process)."""
    import keras
    import numpy as np
    import tfscan.keras
    from scan_rnn import ScanRNN

    rnn = {"lstm": lambda: tfscan.keras.LSTM(args.units),
           "keras_lstm": lambda: keras.layers.LSTM(args.units),
           "scan_rnn": lambda: ScanRNN(args.units)}[kind]()
    model = keras.Sequential([keras.Input((args.length, args.features)), rnn, keras.layers.Dense(1)])
    rng = np.random.default_rng(args.seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def global_batch(step, args):
    """The (x, y) global batch of training step ``step`` (a function of ``seed`` and ``step`` only)."""
    import tensorflow as tf
    seed = tf.stack([tf.constant(args.seed, tf.int64), tf.cast(step, tf.int64)])
    x = tf.random.stateless_normal([args.batch, args.length, args.features], seed)
    y = tf.reduce_sum(tf.sin(x[:, ::2, :1]), axis=1) + 0.1 * tf.random.stateless_normal([args.batch, 1], seed + 1)
    return x, y


def make_strategy(args):
    import tensorflow as tf
    if args.single:
        return tf.distribute.get_strategy(), 0
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=args.collective_timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return strategy, strategy.cluster_resolver.task_id


def train(args: argparse.Namespace) -> int:
    """One worker's training loop; returns its exit code."""
    import numpy as np
    import tensorflow as tf
    import keras

    strategy, task = make_strategy(args)
    chief = task == 0
    with strategy.scope():
        model = build_model(args.model, args)
        optimizer = keras.optimizers.SGD(args.lr, momentum=0.9)  # its update scales with the gradient
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = None
    if args.ckpt_dir:  # non-chief workers save too (saving may run collectives), then discard
        directory = args.ckpt_dir if chief else os.path.join(args.ckpt_dir, f"_worker{task}_tmp")
        manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
        latest = tf.train.latest_checkpoint(args.ckpt_dir)
        if latest:
            checkpoint.restore(latest).assert_consumed()
    start = int(optimizer.iterations.numpy())
    log = _open_log(args, task)
    _log(log, event="start", step=start, pid=os.getpid(), restored=start > 0)

    ds = tf.data.Dataset.range(start, args.steps).map(lambda i: global_batch(i, args))
    ds = ds.unbatch().batch(args.batch, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = iter(strategy.experimental_distribute_dataset(ds.with_options(options)))

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=args.batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        losses = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    losses = []
    try:
        for step in range(start, args.steps):
            t0 = time.perf_counter()
            loss = float(train_step(batches))
            seconds = time.perf_counter() - t0
            losses.append(loss)
            done = step + 1
            saved = manager is not None and (done % args.ckpt_every == 0 or done == args.steps)
            if saved:
                manager.save(checkpoint_number=done)
                if chief and args.save_keras:
                    model.save(os.path.join(args.ckpt_dir, f"model-{done}.keras"))
                    np.savez(os.path.join(args.ckpt_dir, f"weights-{done}.npz"), *model.get_weights())
            _log(log, event="step", step=done, loss=loss, seconds=seconds, saved=saved)
            if args.step_delay:
                time.sleep(args.step_delay)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError, tf.errors.FailedPreconditionError) as e:
        message = " ".join(line.strip() for line in str(e.message).splitlines() if line.strip())
        _log(log, event="peer_lost", error=f"{type(e).__name__}: {message[-400:]}")
        return PEER_LOST
    if manager is not None and not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)
    if args.out_dir:
        np.savez(os.path.join(args.out_dir, f"worker{task}.npz"), *model.get_weights(),
                 losses=np.asarray(losses, np.float64), start=start)
    _log(log, event="done", step=args.steps)
    return 0


def _open_log(args, task):
    if not args.out_dir:
        return None
    os.makedirs(args.out_dir, exist_ok=True)
    return open(os.path.join(args.out_dir, f"worker{task}.log"), "a", buffering=1)


def _log(log, **record) -> None:
    if log is not None:
        log.write(json.dumps(record) + "\n")
        log.flush()


def read_log(path: str) -> list[dict]:
    """The JSON records a worker appended to its log (across restarts)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_weights(path: str) -> tuple[list, "np.ndarray"]:
    """(weights, losses) from a worker's ``.npz``."""
    import numpy as np
    with np.load(path) as z:
        n = len([k for k in z.files if k.startswith("arr_")])
        return [z[f"arr_{i}"] for i in range(n)], z["losses"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.launch:
        argv, given = [], list(sys.argv[1:] if argv is None else argv)
        while given:  # the workers get every argument but --launch N
            a = given.pop(0)
            if a == "--launch":
                given.pop(0)
            elif not a.startswith("--launch="):
                argv.append(a)
        log_dir = args.out_dir or os.path.join(os.getcwd(), "multiworker_logs")
        codes = launch(args.launch, argv, log_dir, timeout=args.timeout)
        print(f"worker exit codes: {codes}; logs in {log_dir}")
        return next((c for c in codes if c), 0)
    return train(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a finished worker must not wait on its peers' gRPC server.
    os._exit(code)
