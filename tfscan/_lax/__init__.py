"""The loop family beside scan, after ``jax.lax``: ``while_loop`` (``loops``, with the
bounded while's gradient in ``bounded``), ``fori_loop`` (``fori``), ``map``, ``cond``/``switch``
(``branch``) and ``associative_scan`` (``assoc``); ``control`` holds what they share."""
