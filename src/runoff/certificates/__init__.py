"""Aggregation and certificates: pure numpy, vectorised over test points (``runoff.certify`` is the entry point)."""

from ._validate import METHODS
from .api import Certification, certified_accuracy, certify
from .dpa import dpa_1v1, dpa_2v1
from .fa import greedy_certificate

__all__ = [
    "METHODS",
    "Certification",
    "certify",
    "certified_accuracy",
    "dpa_1v1",
    "dpa_2v1",
    "greedy_certificate",
]
