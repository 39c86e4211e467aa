"""E copies of any ``torch.nn.Module`` architecture, trained side by side as one module.

:class:`StackedModule` is what :class:`runoff.training.batched_net.BatchedNet` is for runoff's own
layer specs, for a module a user writes: a ``factory(in_shape, n_classes) -> nn.Module`` with
``in_shape = (C, H, W)`` is called once per model, and every parameter and buffer of the E
modules is kept stacked, with the model index as its first dimension (model ``e`` is
``tensor[e]``). Inputs and outputs have ``BatchedNet``'s layout: ``x`` of shape
``(B, E*C, H, W)`` (channel block ``e`` of row ``b`` is sample ``b`` of model ``e``'s batch,
padded rows zero), a mask ``(B, E)`` of real rows, logits ``(B, E, n_classes)``.

Execution modes
---------------
The mode is chosen when the module is built, by looking at one module from the factory:

``"vmap"`` (the module has no buffers)
    Nothing but the parameters changes in training, so the E models run as one computation:
    ``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked parameters,
    on the input rearranged to ``(E, B, C, H, W)``. Padded rows are computed too (they are
    zero rows), and their outputs are set to exactly zero in training, so the masked loss
    gives them no gradient. vmap keeps the models apart: model ``e``'s numbers come from
    ``x``'s block ``e`` and the slices ``[e]`` only.
``"loop"`` (the module has buffers, e.g. BatchNorm's running statistics)
    The models run one after another, each through ``functional_call`` with its own slices
    of the parameters and buffers, on **only its real rows** (``x[mask[:, e]]``): BatchNorm's
    batch statistics see real rows only, and the shapes of model ``e``'s computation depend
    on its own subset alone. A model without any real row at a step is not run at all (its
    buffers stay exactly as they were). Buffers are handed over as views of the stacked
    buffers, so updates made in place (BatchNorm's) land in the stack; a buffer that the
    module replaces instead (``self.buf = self.buf + 1``) is copied back after the call.
    The outputs are scattered into a zero ``(B, E, n_classes)`` tensor.

In eval mode both modes run every row and ignore the mask.

What the isolation rests on
---------------------------
A model's rows must not mix with each other *through anything but buffers* for the vmap mode
to train each model exactly as it would be trained alone: a module without buffers that
mixes the rows of its batch (rare: e.g. ``x - x.mean(0)``, or a batch statistic kept in no
buffer) would take the vmap mode's padded zero rows for data. Its numbers would still depend
on its own subset only (vmap keeps the models apart), but they would no longer be those of
the module trained alone; build such a module with ``mode="loop"``. Layers that draw random
numbers in ``forward`` (dropout) are refused by vmap, and in the loop mode they would draw
from the global generator, in an order and amount set by the other models: they break
isolation and are not supported. Every parameter is trained (``requires_grad`` of the
factory's module is ignored) and must take part in ``forward``, which the constructor checks.

How it plugs into the trainer
-----------------------------
It has the interface of ``BatchedNet`` that :mod:`runoff.training.trainer` uses, so
:class:`~runoff.training.chunk.Chunk` only changes in how it builds the module
(:func:`~runoff.training.chunk.chunk_module`)::

    net = StackedModule(factory, len(ids), in_shape=(C, H, W), n_classes=plan.n_classes)
    self.net = net.init_(self.generators, rule=recipe.init).to(device)

after which ``net.weights`` are the parameters that ``_train_epoch`` differentiates
(``torch.autograd.grad(loss, net.weights)``) and :func:`~runoff.training.optim.sgd_step`
updates per model, ``net(x, mask)`` is the training forward pass, ``net(x)`` in eval mode the
one of :func:`~runoff.training.inference.chunk_logits`, ``state_dict``/``load_state_dict`` the
checkpoint, and ``model_state``/``extract`` a single model. Points to mind when wiring it in:

* :meth:`StackedModule.init_` does not draw from the model generators (model ``e`` is the
  factory's module built after ``torch.manual_seed(generators[e].initial_seed())``), so the
  batch orders that the generators then draw differ from those of a ``BatchedNet`` trained
  by the ``"pytorch"`` rule, which draws its weights from them.
* The state-dict keys (``weights.0``, ``buffer_0``, ...) are not ``BatchedNet``'s: the two
  kinds of checkpoint do not load into each other, and the plan key should name the factory.
* ``default_chunk_size`` estimates memory from a layer spec, which a custom module lacks; the
  loop mode runs E forward passes per step, so large chunks gain nothing there.
* Ray workers rebuild the module, so the factory must be picklable (a module-level function).
"""

from __future__ import annotations

import torch
from torch import nn

from ..param_checks import check_choice, check_int
from ..errors import InvalidParameterError

__all__ = ["STACKED_MODES", "StackedModule"]

#: Execution modes of :class:`StackedModule` (see the module docstring).
STACKED_MODES = ("vmap", "loop")

_PROBE_ROWS = 2  # rows of the probe batch: BatchNorm needs more than one value in training
_TEMPLATE_SEED = 0  # seed of the stand-in modules; their values are never trained or kept


def _build(factory, in_shape, n_classes, seed: int) -> nn.Module:
    """``factory(in_shape, n_classes)`` right after ``torch.manual_seed(seed)``.

    The global CPU generator is left as it was (``fork_rng``), so building models never
    shifts the random numbers of whatever runs next.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory(in_shape, n_classes)
    if not isinstance(module, nn.Module):
        raise InvalidParameterError(f"the model factory must return a torch.nn.Module; got {type(module).__name__}")
    return module


def _layout(module: nn.Module) -> list:
    """Names, shapes and dtypes of a module's parameters and buffers, in their fixed order."""
    return [(kind, name, tuple(t.shape), t.dtype)
            for kind, named in (("param", module.named_parameters()), ("buffer", module.named_buffers()))
            for name, t in named]


def _probe_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the module computes in: that of its first floating-point parameter."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _check_in_shape(in_shape) -> tuple:
    try:
        shape = tuple(int(v) for v in in_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidParameterError(f"in_shape must be (C, H, W), three integers >= 1; got {in_shape!r}")
    return shape


def _probe_template(module: nn.Module, in_shape: tuple, n_classes: int) -> None:
    """Run one factory module on a zero batch, in eval mode, and check its output's shape."""
    x = torch.zeros(_PROBE_ROWS, *in_shape, dtype=_probe_dtype(module))
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:  # whatever the user's forward raises, say what it was given
        raise InvalidParameterError(f"the model factory's module fails on a probe batch of shape {tuple(x.shape)} "
                                    f"({type(exc).__name__}: {exc})") from exc
    finally:
        module.train()
    want = (_PROBE_ROWS, n_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameterError(f"the model factory's module must map a batch of shape {tuple(x.shape)} to "
                                    f"logits of shape {want}; got {got}")


class StackedModule(nn.Module):
    """E independent copies of a user's ``torch.nn.Module`` architecture, as one module.

    Parameters
    ----------
    factory : callable
        ``factory(in_shape, n_classes) -> torch.nn.Module``; the module maps a batch
        ``(B, C, H, W)`` to logits ``(B, n_classes)``. It must build modules of the same
        structure on every call.
    n_models : int
        E, the number of models.
    in_shape : (int, int, int)
        ``(C, H, W)`` of one input image.
    n_classes : int
        Outputs of the module.
    mode : {"vmap", "loop"}, optional
        Execution mode (see the module docstring). Default: ``"loop"`` when the module has
        buffers, ``"vmap"`` otherwise. ``"loop"`` may be forced for a module that mixes the
        rows of its batch; ``"vmap"`` is refused for a module with buffers.

    Attributes
    ----------
    n_models : int
    mode : str
    weights : torch.nn.ParameterList
        Stacked parameters, shape ``(E, *shape)`` each, in the order of the factory module's
        ``named_parameters()`` (names in ``param_names``).
    param_names, buffer_names : tuple of str
        The factory module's parameter and buffer names; buffer ``i`` is stacked as the
        buffer ``buffer_i``, shape ``(E, *shape)``.

    Raises
    ------
    InvalidParameterError
        ``factory`` is not callable or returns no ``nn.Module``, the module has no parameter
        or a parameter that ``forward`` does not use, its output on a probe batch is not
        ``(B, n_classes)``, or it cannot run in the requested mode.

    Notes
    -----
    Until :meth:`init_` is called, every model holds the factory's module built after
    ``torch.manual_seed(0)``. The factory's module itself is kept (not as a submodule) as
    the code that ``functional_call`` runs; its own tensors are stand-ins that are never
    used, trained or saved.
    """

    def __init__(self, factory, n_models: int, *, in_shape, n_classes: int, mode: str | None = None):
        super().__init__()
        if not callable(factory):
            raise InvalidParameterError(f"the model factory must be callable, factory(in_shape, n_classes); "
                                        f"got {type(factory).__name__}")
        self.n_models = check_int(n_models, "n_models", low=1)
        self.in_shape = _check_in_shape(in_shape)
        self.n_classes = check_int(n_classes, "n_classes", low=1)
        self.factory = factory
        template = _build(factory, self.in_shape, self.n_classes, _TEMPLATE_SEED)
        if next(template.parameters(), None) is None:
            raise InvalidParameterError(f"the model factory's module ({type(template).__name__}) has no parameters: "
                                        "there is nothing to train")
        _probe_template(template, self.in_shape, self.n_classes)
        # a plain attribute, not a submodule: its tensors must not join parameters() or state_dict()
        object.__setattr__(self, "_template", template)
        self._layout = _layout(template)
        self.param_names = tuple(name for name, _ in template.named_parameters())
        self.buffer_names = tuple(name for name, _ in template.named_buffers())
        self.mode = self._choose_mode(mode)
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([p.detach()] * self.n_models))
                                        for p in template.parameters())
        persistent = set(template.state_dict())
        for i, (name, buf) in enumerate(template.named_buffers()):
            self.register_buffer(f"buffer_{i}", torch.stack([buf] * self.n_models), persistent=name in persistent)
        self._state_keys = self._map_state_keys(template)
        self._probe_stacked()

    def _choose_mode(self, mode) -> str:
        auto = "loop" if self.buffer_names else "vmap"
        if mode is None:
            return auto
        mode = check_choice(mode, "mode", STACKED_MODES)
        if mode == "vmap" and self.buffer_names:
            raise InvalidParameterError(
                f"mode 'vmap' needs a module without buffers; this one has {', '.join(self.buffer_names[:5])} "
                "(they change in training, which only the 'loop' mode keeps per model)")
        return mode

    def _map_state_keys(self, template: nn.Module) -> list:
        """``(state-dict key, "param" or "buffer", index)`` of each entry of the module's state dict.

        Tied tensors appear under several keys with one index, as in ``state_dict()``.
        """
        index = {id(p): ("param", i) for i, p in enumerate(template.parameters())}
        index.update({id(b): ("buffer", i) for i, b in enumerate(template.buffers())})
        keys = []
        for key, tensor in template.state_dict(keep_vars=True).items():
            if id(tensor) not in index:
                raise InvalidParameterError(f"the model factory's module has state {key!r} that is neither a "
                                            "parameter nor a buffer (extra state is not supported)")
            keys.append((key, *index[id(tensor)]))
        return keys

    @torch.no_grad()
    def _probe_stacked(self) -> None:
        """One training forward pass of all models on zeros: the mode runs, every parameter counts."""
        c, h, w = self.in_shape
        x = torch.zeros(_PROBE_ROWS, self.n_models * c, h, w, dtype=self.weights[0].dtype)
        try:
            with torch.enable_grad(), torch.random.fork_rng(devices=[]):
                out = self(x, torch.ones(_PROBE_ROWS, self.n_models, dtype=x.dtype))
                grads = torch.autograd.grad(out.sum(), list(self.weights), allow_unused=True)
        except Exception as exc:  # vmap's refusals (random or data-dependent ops, .item()) among them
            hint = "; mode='loop' runs the models one by one" if self.mode == "vmap" else ""
            raise InvalidParameterError(f"the model factory's module cannot be trained in {self.mode!r} mode "
                                        f"({type(exc).__name__}: {exc}){hint}") from exc
        finally:
            self._fill(self._template)  # undo the probe's BatchNorm updates
        unused = [name for name, g in zip(self.param_names, grads) if g is None]
        if unused:
            raise InvalidParameterError(f"parameters {', '.join(unused[:5])} of the model factory's module take "
                                        "no part in forward: the trainer differentiates every parameter")

    # ----------------------------------------------------------------- stacked tensors
    def _stacked_buffers(self) -> list:
        return [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

    def _stacked(self, kind: str, i: int) -> torch.Tensor:
        return self.weights[i] if kind == "param" else getattr(self, f"buffer_{i}")

    @torch.no_grad()
    def _fill(self, module: nn.Module, e: int | None = None) -> None:
        """Copy a factory module's parameters and buffers into model ``e`` (every model if None)."""
        pairs = zip([*self.weights, *self._stacked_buffers()], [*module.parameters(), *module.buffers()])
        for stacked, t in pairs:
            (stacked if e is None else stacked[e]).copy_(t)

    def _fresh(self, seed: int) -> nn.Module:
        """A new factory module (seeded), checked to have the structure of the first one."""
        module = _build(self.factory, self.in_shape, self.n_classes, seed)
        if _layout(module) != self._layout:
            raise InvalidParameterError("the model factory built modules of different structure (parameter or buffer "
                                        "names, shapes or dtypes); it must build the same architecture every time")
        return module

    # ----------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_(self, generators, rule: str = "pytorch") -> StackedModule:
        """Model ``e`` := the factory's module built after ``torch.manual_seed(generators[e].initial_seed())``.

        The generators are only read, never drawn from (they go on to draw the models' batch
        orders), and the global CPU generator is left as it was.

        Parameters
        ----------
        generators : sequence of torch.Generator, length n_models
        rule : str, default "pytorch"
            Accepted for ``BatchedNet.init_``'s signature and ignored: a custom module
            initialises itself when the factory builds it, by whatever rule its author chose.

        Returns
        -------
        StackedModule
            ``self``.
        """
        if len(generators) != self.n_models:
            raise InvalidParameterError(f"need {self.n_models} generators; got {len(generators)}")
        for e, g in enumerate(generators):
            self._fill(self._fresh(g.initial_seed()), e)
        return self

    # ----------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> StackedModule:
        super().train(mode)
        self._template.train(mode)  # functional_call runs the template: its mode is the models' mode
        return self

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every model on its own batch.

        Parameters
        ----------
        x : torch.Tensor, shape (B, E*C, H, W)
            Row ``b``, channel block ``e``: sample ``b`` of model ``e``'s batch. Padded rows
            must be zero.
        mask : torch.Tensor, shape (B, E), optional
            Nonzero (or True) for real samples, 0 for padding. Required in training mode;
            ignored in eval mode.

        Returns
        -------
        torch.Tensor, shape (B, E, n_classes)
            In training mode padded rows are exactly zero.
        """
        xs = self._split(x)
        keep = self._check_mask(mask, xs.shape[0]) if self.training else None
        if self.mode == "vmap":
            return self._forward_vmap(xs, keep)
        return self._forward_loop(xs, keep)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E*C, H, W) -> (B, E, C, H, W), checked."""
        c, h, w = self.in_shape
        want = (self.n_models * c, h, w)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidParameterError(f"StackedModule input must have shape (B, {', '.join(map(str, want))}); "
                                        f"got {got}")
        return x.reshape(x.shape[0], self.n_models, c, h, w)

    def _check_mask(self, mask, rows: int) -> torch.Tensor:
        """The mask as bool (B, E)."""
        if mask is None:
            raise InvalidParameterError("StackedModule needs a mask in training mode")
        if tuple(mask.shape) != (rows, self.n_models):
            raise InvalidParameterError(f"mask must have shape ({rows}, {self.n_models}); got {tuple(mask.shape)}")
        return mask != 0

    def _call_template(self, tensors: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self._template, tensors, (x,))

    def _forward_vmap(self, xs: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        params = dict(zip(self.param_names, self.weights))
        out = torch.func.vmap(self._call_template)(params, xs.transpose(0, 1)).transpose(0, 1)  # (B, E, n)
        if keep is None:
            return out
        # where, not a product: a padded row stays exactly zero even if its model diverged (0 * nan is nan)
        return torch.where(keep[:, :, None], out, 0.0)

    def _forward_loop(self, xs: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b = xs.shape[0]
        counts = None if keep is None else keep.sum(dim=0).tolist()  # one device sync per step
        cols = []
        for e in range(self.n_models):
            if keep is None:
                cols.append(self._run_one(e, xs[:, e]))
            elif counts[e] == 0:  # not run at all: its buffers (BatchNorm statistics) stay as they are
                cols.append(xs.new_zeros(b, self.n_classes))
            else:
                rows = keep[:, e].nonzero().squeeze(1)
                y = self._run_one(e, xs[rows, e])  # real rows only: shapes set by this model's subset alone
                cols.append(y.new_zeros(b, self.n_classes).index_copy(0, rows, y))
        return torch.stack(cols, dim=1)

    def _run_one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Model ``e`` on ``x`` (n, C, H, W), its buffer updates written into the stacked buffers."""
        stacked = self._stacked_buffers()
        views = {name: buf[e] for name, buf in zip(self.buffer_names, stacked)}
        tensors = {**{name: w[e] for name, w in zip(self.param_names, self.weights)}, **views}
        out = self._call_template(tensors, x)
        # In-place updates (BatchNorm's) went through the views already; functional_call hands
        # back in the dict a buffer that forward replaced instead, which is copied in here.
        with torch.no_grad():
            for name, buf in zip(self.buffer_names, stacked):
                if tensors[name] is not views[name]:
                    buf[e].copy_(tensors[name])
        return out

    # ----------------------------------------------------------------- one model in/out
    def model_state(self, e: int) -> dict:
        """State dict of model ``e`` in the factory module's own ``state_dict()`` layout (copies)."""
        copies, out = {}, {}
        for key, kind, i in self._state_keys:
            if (kind, i) not in copies:  # tied tensors stay one tensor, as in state_dict()
                copies[kind, i] = self._stacked(kind, i)[e].detach().clone()
            out[key] = copies[kind, i]
        return out

    @torch.no_grad()
    def load_model_state(self, e: int, state: dict) -> None:
        """Load a factory module's state dict (e.g. ``module.state_dict()``) into model ``e``.

        Raises
        ------
        InvalidParameterError
            Keys missing or unexpected, or a tensor of the wrong shape.
        """
        keys = [key for key, _, _ in self._state_keys]
        missing, unexpected = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
        if missing or unexpected:
            raise InvalidParameterError(f"model state does not fit the module: missing {missing[:5]}, "
                                        f"unexpected {unexpected[:5]}")
        for key, kind, i in self._state_keys:
            target = self._stacked(kind, i)[e]
            if tuple(state[key].shape) != tuple(target.shape):
                raise InvalidParameterError(f"model state {key!r} has shape {tuple(state[key].shape)}; "
                                            f"expected {tuple(target.shape)}")
            target.copy_(state[key])

    def extract(self, e: int) -> nn.Module:
        """Model ``e`` as an ordinary module from the factory (a copy, on this module's device and dtype)."""
        module = self._fresh(_TEMPLATE_SEED)  # seeded only to leave the global generator alone
        with torch.no_grad():
            # .data keeps each Parameter object (and so tied weights) while taking the stack's
            # device and dtype, which load_state_dict would cast to the fresh module's
            for p, w in zip(module.parameters(), self.weights):
                p.data = w[e].detach().clone()
            for buf, stacked in zip(module.buffers(), self._stacked_buffers()):
                buf.data = stacked[e].clone()
        return module

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, mode={self.mode!r}, in_shape={self.in_shape}, n_classes={self.n_classes}"
