"""Reports from a suite's results: tables, logit-band spectra, ablations, figures
(installed as kdbench.analysis). Everything here reads results; nothing trains.

- ``report``: ``kdbench report RESULTS_DIR``: mean ± std over seeds as LaTeX (booktabs),
  Markdown and CSV, paired differences to the suite's reference, the controls block,
  training curves and the teacher–student gap (``write_report``), computed once into a
  ``Report`` (``build_report``); ``stats``: the paired t-test; ``report_tables``: its
  Markdown and LaTeX tables, from the cells of ``cells``; ``html``: the same as one
  self-contained ``report.html``.
- ``spectra``: ``kdbench spectra RESULTS_DIR``: wavelet band energies of teacher and student
  test logits under FiGKD's class orders (``write_spectra``).
- ``ablation``: the tables, ``best.json`` and figures of ``kdbench ablate SUITE`` (whose
  study ``kdbench.runner.tuning`` runs), from the study's storage and the runs' records
  (``write_ablation``).
- ``curves``: the report's figures; ``style``: the one figure style (sizes, colour per
  method, PDF + PNG); ``tables``: LaTeX (pandas' Styler) and Markdown writers of a grid of
  cells, and the ``Markup`` cells are written in; ``runs``: a suite's runs as a DataFrame;
  ``commands``: the ``report`` and ``spectra`` subcommands, added to ``kdbench`` by
  ``register_commands``.
"""
