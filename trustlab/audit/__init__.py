"""Audit spec, runner, auditors, report schema, report store, policy gate and model cards."""
