"""Scheduler adapters: they submit, observe and cancel; they never decide."""
