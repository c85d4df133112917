"""trustlab: train, privately train and audit PyTorch models in one pipeline."""

__version__ = "0.1.0"
