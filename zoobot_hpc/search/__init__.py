"""Hyper-parameter search: the Optuna study adapter, submit, status, the trial job, its reporter and report."""
