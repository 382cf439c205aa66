"""tfscan's benchmark suite: ``python -m benchmarks [--quick] [--smoke] [--out DIR]``.

Times tfscan.scan side by side with jax.lax.scan (jax.jit), tf.scan (tf.function, with
and without jit_compile), keras.ops.scan (TensorFlow backend), a hand-written
tf.while_loop + TensorArray under XLA and NumPy, in one process, and writes
``results/<machine>.json``, ``results/<machine>.md`` and PNG plots. See README.md.
"""
