"""Tools around the flow rather than steps of it: ``kdbench doctor`` (``doctor``, with its
fast-path smoke in ``smoke``), whether a machine will run a suite; ``kdbench bench``
(``bench``), what the harness costs."""
