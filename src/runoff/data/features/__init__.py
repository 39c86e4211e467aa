"""Embeddings of a frozen pretrained backbone, for partition ensembles of small heads (issue 25).

A backbone trained on other, trusted data maps every image to an embedding; each base model is
then a small head trained on its own subset's embeddings (:mod:`runoff.training.heads`). The
certificate keeps its form: a poisoned image changes its own embedding only, so it reaches the
heads of its bucket only, provided an embedding depends on its own image alone, which
:mod:`.extract` checks.

- :mod:`.spec`: the ``--features`` spec (``package.module:function`` or a ``torchvision:``
  preset), loading the frozen extractor, its weights digest;
- :mod:`.extract`: running it over uint8 images, the batch-invariance check;
- :mod:`.cache`: embeddings kept per backbone and image, computed once;
- :mod:`.embedded`: :class:`EmbeddedDataset`, :func:`embed_dataset`, ``npz:`` files of embeddings.

PyTorch is imported only inside the functions that run an extractor (and by :mod:`.transform`,
which only :func:`load_extractor` imports), so importing this package stays light.
"""

from .embedded import (Backbone, EmbeddedDataset, check_backbone_record, embed_dataset, features_of_view,
                       hashable_dataset, load_backbone, load_npz_features, npz_holds_embeddings)
from .extract import check_batch_invariance, compute_embeddings
from .spec import PRESETS, FeaturesSpec, load_extractor, parse_features_spec, weights_digest

__all__ = ["PRESETS", "Backbone", "EmbeddedDataset", "FeaturesSpec", "check_backbone_record", "check_batch_invariance",
           "compute_embeddings", "embed_dataset", "features_of_view", "hashable_dataset", "load_backbone", "load_extractor", "load_npz_features",
           "npz_holds_embeddings", "parse_features_spec", "weights_digest"]
