"""The login node: plan, check, submit, watch, report."""
