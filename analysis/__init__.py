"""Reports from a suite's results: tables, logit-band spectra, ablations, figures
(installed as kdbench.analysis)."""
