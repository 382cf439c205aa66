"""Beyond one machine: tfscan models trained by two ``MultiWorkerMirroredStrategy`` workers
(processes on 127.0.0.1 ports), a job that survives a worker's death by restarting from its
last checkpoint, and the TPU-shaped per-replica XLA step.

The worker program is ``examples/multiworker_train.py`` (the one the README launches);
the single-process reference runs the same loop in this process under the default
strategy. Every worker is started in its own process group and killed in a ``finally``;
every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import multiworker_train as mw  # noqa: E402

STEPS = 8
SCHEDULE = ["--steps", str(STEPS), "--ckpt-every", "2"]
JOB_TIMEOUT = 240  # seconds for one two-worker job (normally ~15 s)


def _tail(out_dir: str) -> str:
    text = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith((".stdout", ".log")):
            with open(os.path.join(out_dir, name), errors="replace") as f:
                text.append(f"--- {name}\n" + f.read()[-1500:])
    return "\n".join(text)


def _run_job(out_dir: str, argv: list[str]) -> list:
    """Run two workers to completion; both workers' (weights, losses)."""
    try:
        codes = mw.launch(2, [*argv, "--out-dir", out_dir], out_dir, timeout=JOB_TIMEOUT)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_tail(out_dir)}") from None
    assert codes == [0, 0], f"worker exit codes {codes}\n{_tail(out_dir)}"
    return [mw.load_weights(os.path.join(out_dir, f"worker{i}.npz")) for i in range(2)]


_references: dict = {}


def _reference(model: str, tmp_root) -> tuple:
    """(weights, losses) of the same schedule trained in this process without a strategy."""
    if model not in _references:
        out = str(tmp_root / f"single-{model}")
        assert mw.train(mw.parse_args(["--model", model, *SCHEDULE, "--single", "--out-dir", out])) == 0
        _references[model] = mw.load_weights(os.path.join(out, "worker0.npz"))
    return _references[model]


def _assert_same_weights(got, want, exact=False, what=""):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} weight {i}")
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{what} weight {i}")


@pytest.mark.parametrize("model", ["lstm", "scan_rnn"])
def test_two_workers_match_single_process_training(model, tmp_path_factory):
    (w0, l0), (w1, l1) = _run_job(str(tmp_path_factory.mktemp(f"two-{model}")), ["--model", model, *SCHEDULE])
    _assert_same_weights(w1, w0, exact=True, what="worker 1 vs worker 0")
    np.testing.assert_array_equal(l0, l1)
    ref_w, ref_l = _reference(model, tmp_path_factory.getbasetemp())
    _assert_same_weights(w0, ref_w, what="two workers vs one process")
    np.testing.assert_allclose(l0, ref_l, rtol=1e-6)
    assert len(l0) == STEPS and l0[-1] < l0[0]
    if model == "lstm":  # and keras.layers.LSTM, same weights, same schedule, one process
        keras_w, keras_l = _reference("keras_lstm", tmp_path_factory.getbasetemp())
        np.testing.assert_allclose(l0, keras_l, rtol=1e-5)
        _assert_same_weights(w0, keras_w, what="tfscan LSTM (two workers) vs keras LSTM")


def _wait_for_step(log: str, step: int, procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(log) and any(r["event"] == "step" and r["step"] >= step for r in mw.read_log(log)):
            return
        assert all(p.poll() is None for p in procs), "a worker exited before the kill"
        time.sleep(0.05)
    raise TimeoutError(f"no worker reached step {step} in {timeout} s")


def _check_mid_training_checkpoints(ckpt_dir: str) -> int:
    """The last checkpoint (and the .keras file saved with it) restore the chief's weights exactly."""
    import keras
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(ckpt_dir)
    assert latest, os.listdir(ckpt_dir)
    step = int(latest.rsplit("-", 1)[1])
    with np.load(os.path.join(ckpt_dir, f"weights-{step}.npz")) as z:
        saved = [z[f"arr_{i}"] for i in range(len(z.files))]
    args = mw.parse_args(["--model", "lstm", *SCHEDULE, "--seed", "1"])  # other initial weights
    model = mw.build_model("lstm", args)
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(latest).assert_consumed()
    _assert_same_weights(model.get_weights(), saved, exact=True, what=f"tf.train.Checkpoint {latest}")
    assert int(optimizer.iterations.numpy()) == step
    loaded = keras.models.load_model(os.path.join(ckpt_dir, f"model-{step}.keras"))
    assert type(loaded.layers[0]).__name__ == "LSTM" and loaded.layers[0].__module__ == "tfscan.keras"
    _assert_same_weights(loaded.get_weights(), saved, exact=True, what=f"model-{step}.keras")
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    return step


@pytest.mark.slow  # ~40 s of wall time on an idle machine (a 20 s collective timeout among it)
def test_job_survives_a_killed_worker(tmp_path, tmp_path_factory):
    """Kill worker 1 mid-run: worker 0 gives up (collective timeout) instead of hanging; the
    relaunched job resumes at the last checkpoint and ends with the uninterrupted run's weights."""
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    argv = ["--model", "lstm", *SCHEDULE, "--ckpt-dir", ckpt, "--out-dir", out, "--save-keras"]
    procs = mw.start_workers(2, [*argv, "--step-delay", "1.0", "--collective-timeout", "20"], out)
    try:
        _wait_for_step(os.path.join(out, "worker0.log"), 3, procs, timeout=JOB_TIMEOUT)
        os.kill(procs[1].pid, signal.SIGKILL)  # worker 1 dies, by its own pid
        assert procs[1].wait(timeout=30) == -signal.SIGKILL
        code = procs[0].wait(timeout=120)  # the survivor must not hang on its dead peer
        assert code == mw.PEER_LOST, f"survivor exit code {code}\n{_tail(out)}"
    finally:
        mw.stop_workers(procs)
    assert mw.read_log(os.path.join(out, "worker0.log"))[-1]["event"] == "peer_lost"
    resume_at = _check_mid_training_checkpoints(ckpt)
    assert 0 < resume_at < STEPS

    (w0, l0), (w1, l1) = _run_job(out, argv)  # the whole job restarts from the checkpoint
    for i in range(2):
        starts = [r for r in mw.read_log(os.path.join(out, f"worker{i}.log")) if r["event"] == "start"]
        assert [s["step"] for s in starts] == [0, resume_at], starts
    ref_w, ref_l = _reference("lstm", tmp_path_factory.getbasetemp())
    _assert_same_weights(w1, w0, exact=True, what="worker 1 vs worker 0")
    _assert_same_weights(w0, ref_w, what="resumed job vs uninterrupted run")
    np.testing.assert_allclose(l0, ref_l[resume_at:], rtol=1e-6)  # no step lost or applied twice


def test_tpu_shaped_step_is_one_xla_program_per_replica():
    """jit_compile, static shapes and mixed_bfloat16 under MirroredStrategy (two logical CPUs):
    each replica runs one XLA program with no nested non-XLA call, and it trains."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "xla_replica_step.py")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert [c for c in report["nested_calls"] if not c[2]] == [], report["nested_calls"]
    assert [d.rsplit(":", 2)[-2:] for d in report["replica_programs"]] == [["CPU", "0"], ["CPU", "1"]]
    assert report["hlo_modules"] == 1 and report["hlo_while"] and report["hlo_bf16"], report
    losses = report["losses"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_nested_call_check_sees_a_non_xla_call():
    """The check above can fail: a plain tf.function called inside a jit-compiled one is reported."""
    import tensorflow as tf
    import xla_replica_step

    inner = tf.function(lambda x: x * 2.0)
    outer = tf.function(lambda x: inner(x) + 1.0, jit_compile=True)
    graph = outer.get_concrete_function(tf.TensorSpec([3])).graph.as_graph_def()
    calls = list(xla_replica_step._calls(graph))
    assert calls and not any(xla for _, _, xla in calls), calls
    compiled_inner = tf.function(lambda x: x * 2.0, jit_compile=True)
    outer2 = tf.function(lambda x: compiled_inner(x) + 1.0, jit_compile=True)
    calls2 = list(xla_replica_step._calls(outer2.get_concrete_function(tf.TensorSpec([3])).graph.as_graph_def()))
    assert calls2 and all(xla for _, _, xla in calls2), calls2
