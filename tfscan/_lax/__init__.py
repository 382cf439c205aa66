"""The loop family beside scan, after ``jax.lax``: ``while_loop``/``fori_loop``/``map``
(with the bounded while's gradient), ``cond``/``switch`` and ``associative_scan``."""
