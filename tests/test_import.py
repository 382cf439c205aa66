"""``import tfscan`` changes no TensorFlow registry (pfor's converters are installed on first use)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from tensorflow.python.ops.parallel_for import pfor
    before = dict(pfor._pfor_converter_registry)
    import tfscan
    after = pfor._pfor_converter_registry
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before), \\
        sorted(k for k in after if after.get(k) is not before.get(k))
    import tensorflow as tf
    out = tfscan.vmap(lambda x: tfscan.scan(lambda c, y: (c + y, None), 0.0, x)[0])(tf.ones([2, 3]))
    assert out.numpy().tolist() == [3.0, 3.0]
    assert pfor._pfor_converter_registry["While"] is not before["While"]  # installed by the first vmap
    print("OK")
""")


def test_import_changes_no_tensorflow_registry():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
