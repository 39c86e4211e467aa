"""The first stage: data sets and the paper's named configurations.

- :mod:`.dataset`: the labelled image set every loader returns;
- :mod:`.datasets`: loaders returning uint8 images and labels (``digits`` embedded; MNIST,
  CIFAR-10 and GTSRB read from a local folder);
- :mod:`.custom`: one's own data (``folder:PATH``, ``npz:FILE``), :mod:`.cache` its decode
  cache, :mod:`.download` the built-in sets' downloads;
- :mod:`.configs`: every setting of the paper's tables, with the published training recipes.

Which samples each base model sees is the next stage's (:mod:`runoff.plan`). None of these
imports PyTorch.
"""

from .configs import CONFIGS, get_config
from .datasets import DATASETS, Dataset, load_dataset

__all__ = ["CONFIGS", "DATASETS", "Dataset", "get_config", "load_dataset"]
