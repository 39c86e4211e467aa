"""Aggregation and certificates: pure numpy, vectorised over test points (``runoff.certify`` is the entry point)."""

from .methods import METHODS, REGISTRY, Method, check_methods, get_method, methods_for
from .api import Certification, certified_accuracy, certify, certify_ensemble
from .collective import CollectiveAttack, CollectiveCertification, certify_collective
from .dpa import dpa_1v1, dpa_2v1
from .fa import greedy_certificate

__all__ = [
    "METHODS",
    "REGISTRY",
    "Method",
    "get_method",
    "check_methods",
    "methods_for",
    "Certification",
    "certify",
    "certify_ensemble",
    "certified_accuracy",
    "certify_collective",
    "CollectiveCertification",
    "CollectiveAttack",
    "dpa_1v1",
    "dpa_2v1",
    "greedy_certificate",
]
