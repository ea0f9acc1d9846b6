"""Training only: the Lightning module and data module, the trainer, resuming a run, decision thresholds, the fit
loop (``train``). Nothing in hst below the commands imports it."""
