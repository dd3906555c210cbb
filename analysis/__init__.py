"""Reports from a suite's results: tables, logit-band spectra, ablations, figures
(installed as kdbench.analysis).

- ``report``: ``kdbench report RESULTS_DIR``: mean ± std over seeds as LaTeX (booktabs),
  Markdown and CSV, paired differences to the suite's reference, the controls block,
  training curves and the teacher–student gap (``write_report``); ``stats``: the paired
  t-test; ``html``: the same as one self-contained ``report.html``.
- ``spectra``: ``kdbench spectra RESULTS_DIR``: wavelet band energies of teacher and student
  test logits under FiGKD's class orders (``write_spectra``).
- ``ablation``: ``kdbench ablate SUITE``: the Optuna study of a suite's ``ablation:`` block
  (``run_ablation``).
- ``curves``: the report's figures; ``style``: the one figure style (sizes, colour per
  method, PDF + PNG); ``tables``: LaTeX and Markdown writers; ``runs``: a suite's runs as a
  DataFrame; ``commands``: the subcommands, added to ``kdbench`` by ``register_commands``.
"""
