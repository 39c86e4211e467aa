"""What the trainer needs of a chunk's module: the ``ModelStack`` protocol.

A chunk of base models trains as one module holding every model's parameters along a leading
model axis. Two classes provide it: :class:`~runoff.training.batched_net.BatchedNet` (the registry's
architectures, batched by hand) and :class:`~runoff.training.stacked.StackedModule` (any
``torch.nn.Module`` from a factory, stacked with ``torch.func``). The trainer, checkpoints and
:class:`~runoff.training.ensemble.Ensemble` use only what this protocol names, besides the
``torch.nn.Module`` interface (``state_dict``, ``train``, ``eval``, the forward pass).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["ModelStack"]


@runtime_checkable
class ModelStack(Protocol):
    """A chunk of ``n_models`` base models in one module.

    Attributes
    ----------
    n_models : int
        Models in the stack.
    weights : sequence of torch.nn.Parameter
        Every trainable tensor, each with the model axis first (the SGD step's parameters).
    """

    n_models: int
    weights: object

    def init_(self, generators, rule: str = "pytorch") -> "ModelStack":
        """Initialise model ``e`` from ``generators[e]`` alone (poison isolation); returns self."""

    def model_state(self, e: int) -> dict:
        """Model ``e``'s tensors, detached, as a dict (what a checkpoint's health checks read)."""

    def load_model_state(self, e: int, state: dict) -> None:
        """Set model ``e`` from :meth:`model_state`'s dict."""

    def extract(self, e: int):
        """Model ``e`` as a stand-alone ``torch.nn.Module`` that computes what it computes in
        the stack."""
