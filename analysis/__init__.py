"""Reports from a suite's results: tables, logit-band spectra, ablations, figures
(installed as kdbench.analysis). Everything here reads results; nothing trains.

- ``report``: ``kdbench report RESULTS_DIR``: mean ± std over seeds as LaTeX (booktabs),
  Markdown and CSV, paired differences to the suite's reference, the controls block,
  training curves and the teacher–student gap (``write_report``); ``stats``: the paired
  t-test; ``html``: the same as one self-contained ``report.html``.
- ``spectra``: ``kdbench spectra RESULTS_DIR``: wavelet band energies of teacher and student
  test logits under FiGKD's class orders (``write_spectra``).
- ``ablation``: the tables, ``best.json`` and figures of ``kdbench ablate SUITE`` (whose
  study ``kdbench.tuning`` runs), from the study's storage and the runs' records
  (``write_ablation``).
- ``curves``: the report's figures; ``style``: the one figure style (sizes, colour per
  method, PDF + PNG); ``tables``: LaTeX and Markdown writers; ``runs``: a suite's runs as a
  DataFrame; ``commands``: the ``report`` and ``spectra`` subcommands, added to ``kdbench`` by
  ``register_commands``.
"""
