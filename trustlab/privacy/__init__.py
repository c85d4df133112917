"""Differential privacy: the DP-SGD engine (``make_private``), accounting, DP-friendly layers.

Privacy *audits* (membership inference metrics, empirical ε) live in ``trustlab.privacy.audit``.
"""

from trustlab.privacy.accounting import PrivacyFacts, calibrate_noise, compute_epsilon
from trustlab.privacy.batches import BatchMemoryManager
from trustlab.privacy.engine import make_private
from trustlab.privacy.optimizer import DPOptimizer
from trustlab.privacy.attention import DPMultiheadAttention
from trustlab.privacy.layers import DPGRU, DPLSTM, DPRNN
from trustlab.privacy.validators import fix, unfix, validate

__all__ = ["BatchMemoryManager", "DPGRU", "DPLSTM", "DPMultiheadAttention", "DPOptimizer",
           "DPRNN", "PrivacyFacts", "calibrate_noise", "compute_epsilon", "fix", "make_private",
           "unfix", "validate"]
