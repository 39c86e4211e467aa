"""runoff: provable defenses against data poisoning.

Partition ensembles (DPA, FA, DPA*) aggregated by plurality vote or Run-Off Election, with a
certificate for every prediction: the number of training samples an attacker could insert or
remove without changing it. Importing runoff never imports torch.
"""

from .allocator import AllocatorTuning, tune_allocator
from .certificates import (
    METHODS,
    Certification,
    CollectiveCertification,
    certified_accuracy,
    certify,
    certify_collective,
)
from .errors import (
    BackendError,
    CheckpointError,
    CompileFallbackWarning,
    DataFileError,
    InvalidLabelsError,
    InvalidParameterError,
    InvalidScoresError,
    LogitsFileError,
    MissingDependencyError,
    RunDirectoryError,
    RunLockedError,
    RunoffError,
    RunoffWarning,
    RunUnfinishedError,
    StaleLockWarning,
    TrainingDivergedError,
    UnevenPlanWarning,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Certification",
    "certify",
    "certified_accuracy",
    "certify_collective",
    "CollectiveCertification",
    "tune_allocator",
    "AllocatorTuning",
    "RunoffError",
    "RunoffWarning",
    "CompileFallbackWarning",
    "UnevenPlanWarning",
    "StaleLockWarning",
    "InvalidScoresError",
    "InvalidLabelsError",
    "InvalidParameterError",
    "LogitsFileError",
    "RunDirectoryError",
    "RunLockedError",
    "RunUnfinishedError",
    "CheckpointError",
    "DataFileError",
    "BackendError",
    "TrainingDivergedError",
    "MissingDependencyError",
    "__version__",
]
