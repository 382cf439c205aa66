"""The TPU-shaped training step: per replica, one XLA program (``jit_compile=True``,
static shapes, ``mixed_bfloat16``) holding the model's forward and backward scans.

``TPUStrategy.run`` compiles each replica's computation into a single XLA program, so
nothing inside it may be a call XLA cannot compile. This script builds that step with
``tf.distribute.MirroredStrategy`` over two logical CPU devices and reports (as one JSON
line on stdout) what the per-replica program is made of; ``tests/test_multiworker.py``
asserts on the report.

Two things differ from a TPU, both imposed by ``MirroredStrategy`` on CPUs:

* a ``jit_compile`` ``tf.function`` passed *directly* to ``strategy.run`` is lifted
  around all replicas (only on GPUs does TensorFlow keep it per replica), which puts
  every replica's variables in one XLA cluster and fails ("Trying to access resource
  ... located in device CPU:1 from device CPU:0"); so the replica function calls it;
* a synchronization point (gradient all-reduce, ``optimizer.apply_gradients``) inside a
  nested ``tf.function`` is a ``merge_call`` error; so the compiled function returns
  the loss and gradients, and the replica function applies them.

Run: ``python examples/xla_replica_step.py`` (it configures the logical devices, so it
must start its own process).
"""

from __future__ import annotations

import json
import os
import sys

G, T, F, H, STEPS = 8, 6, 3, 8, 12  # global batch, time, features, units, training steps


def main() -> dict:
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import tfscan.keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((T, F)), tfscan.keras.LSTM(H),
                                  keras.layers.Dense(1, dtype="float32")])
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(G, T, F)).astype("float32")
    y = np.sum(np.sin(x[:, ::2, :1]), axis=1).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().unbatch().batch(G, drop_remainder=True)
    batches = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function(jit_compile=True)
    def compiled_step(x, y):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=G)
        return loss, tape.gradient(loss, model.trainable_variables)

    def replica_step(x, y):
        loss, grads = compiled_step(x, y)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        return strategy.reduce("SUM", strategy.run(replica_step, args=next(iterator)), axis=None)

    losses = [float(train_step(batches)) for _ in range(STEPS)]

    local = G // strategy.num_replicas_in_sync
    spec = (tf.TensorSpec([local, T, F], tf.float32), tf.TensorSpec([local, 1], tf.float32))
    replica_graph = compiled_step.get_concrete_function(*spec).graph.as_graph_def()
    outer = train_step.get_concrete_function(batches).graph.as_graph_def()
    compiled = {f.signature.name for f in outer.library.function if _must_compile(f.attr)}
    hlo = compiled_step.experimental_get_compiler_ir(
        tf.constant(x[:local]), tf.constant(y[:local]))(stage="hlo")
    return {
        "losses": losses,
        # every function call inside the per-replica program (its graph and its library)
        "nested_calls": [(where, op, xla) for where, op, xla in _calls(replica_graph)],
        # the outer step's calls of a jit-compiled function: one per replica device
        "replica_programs": sorted(n.device for n in outer.node
                                   if n.op in _CALLS and n.attr["f"].func.name in compiled),
        "hlo_modules": hlo.count("HloModule "),
        "hlo_while": " while(" in hlo,
        "hlo_bf16": "bf16[" in hlo,
    }


_CALLS = {"PartitionedCall", "StatefulPartitionedCall"}


def _must_compile(attr) -> bool:
    return "_XlaMustCompile" in attr and attr["_XlaMustCompile"].b


def _calls(graph_def):
    """(where, op, XLA-compiled?) for every function-call node in the graph and its library."""
    library = {f.signature.name: f for f in graph_def.library.function}
    bodies = [("graph", graph_def.node)] + [(name, f.node_def) for name, f in library.items()]
    for where, nodes in bodies:
        for n in nodes:
            if n.op in _CALLS:
                callee = library.get(n.attr["f"].func.name)
                yield where, n.name, _must_compile(n.attr) or bool(callee and _must_compile(callee.attr))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    report = main()
    print(json.dumps(report))
    sys.stdout.flush()
