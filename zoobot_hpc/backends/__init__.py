"""Scheduler backends: the only code that names a scheduler or calls its commands."""
