"""The scan pipeline: trace the step once (``plan``, ``step``), emit the compiled loop
(``program``, ``buffered_loop``), and differentiate it with a VJP of its own
(``residuals``, ``autodiff``, ``remat``). ``scan.py`` holds the public entry point."""
