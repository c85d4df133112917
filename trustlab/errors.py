"""The one exception type trustlab raises for bad input; the CLI turns it into exit code 2."""


class TrustlabError(Exception):
    """Bad input or an unusable artefact: the message says what, where, and what to do instead."""


class DataError(TrustlabError):
    """A data set or data file cannot be loaded or does not have the expected shape."""


class CheckpointError(TrustlabError):
    """A checkpoint is missing, corrupted or not in the safetensors + meta.json format."""


class ConfigError(TrustlabError):
    """An unknown name or invalid value in a configuration (arch, dataset, auditor, spec)."""
