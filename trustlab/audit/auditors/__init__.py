"""Built-in auditors: every module here is imported by the runner and registers its auditor."""
