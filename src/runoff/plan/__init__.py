"""The second stage: which training samples each base model sees.

- :mod:`.hashing`: the content hashes: canonical order, the bucket of each sample
  (``pixelsum`` or ``sha256``), fingerprints of a data set and of each subset;
- :mod:`.spread`: Finite Aggregation's spread, the shifts that map a bucket to the ``d``
  models it feeds (DPA: ``d = 1``), the published one by default;
- :mod:`.partition`: the :class:`~runoff.plan.partition.PartitionPlan` (buckets, spread,
  per-subset normalisation) and ``plan.json``.

A plan is a recipe: from it and the data set every subset can be rebuilt. None of these
imports PyTorch.
"""

from .partition import PLAN_FILE, PartitionPlan, make_plan
from .spread import reference_spread

__all__ = ["PLAN_FILE", "PartitionPlan", "make_plan", "reference_spread"]
