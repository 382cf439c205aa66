"""The function transformations: ``jit``, ``grad``/``value_and_grad`` and ``vmap`` (with
the ``pfor`` batching rules that make a scan batch as one loop)."""
