"""The first stage: data sets, partition plans, and the paper's named configurations.

- :mod:`.datasets`: loaders returning uint8 images and labels (``digits`` embedded; MNIST,
  CIFAR-10 and GTSRB read from a local folder);
- :mod:`.partition`: the content hash, the spread and the plan that says which samples each
  base model sees;
- :mod:`.configs`: every setting of the paper's tables, with the published training recipes.

None of these imports PyTorch.
"""

from .configs import CONFIGS, get_config
from .datasets import DATASETS, Dataset, load_dataset
from .partition import PartitionPlan, make_plan

__all__ = ["CONFIGS", "DATASETS", "Dataset", "PartitionPlan", "get_config", "load_dataset", "make_plan"]
