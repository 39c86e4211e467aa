"""Train a small CNN backbone on the public half of Fashion-MNIST, for heads on frozen embeddings.

Issue 25's setting: a backbone trained on other, trusted data is frozen, and each base model
of a partition ensemble is a small head on the embeddings of its own subset. Here the trusted
data are the **public half** of Fashion-MNIST's 60,000 training images: the images at **even**
positions of the training file (0, 2, 4, ...: 30,000 images, 2,966 to 3,038 per class). The
**private half** (the odd positions, 30,000 images) is what the certified ensemble is trained
on (``benchmarks/bench_features.py``); the backbone never sees it. :func:`split` is that split.

The network: conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-maxpool2, flatten,
linear(3136, 128)-ReLU, dropout 0.25, linear(128, 10). Trained with Adam (lr 1e-3, halved for
the last 2 epochs), batch 128, 4 epochs, a random horizontal flip, seed 0, 2 torch threads: 60 s
on 2 cores of an AMD EPYC (load 1.4; 497 s while other jobs loaded the 2 cores to 2.6-6.8),
89.4% test accuracy. The weights file holds the whole network's state dict.

:func:`backbone` is the feature extractor for ``runoff train --features`` (and
``runoff.data.features.load_backbone``): the network without its last layer, in eval mode,
mapping float32 images ``(N, 1, 28, 28)`` in ``[0, 1]`` to 128-d embeddings (after the ReLU;
dropout is the identity in eval mode, and BatchNorm uses its running statistics, so each
embedding depends on its own image only). It reads the weights from ``$RUNOFF_FASHION_BACKBONE``,
else ``fashion-backbone.pt`` in the current folder::

    python examples/train_backbone.py --data-root DATA --out fashion-backbone.pt
    PYTHONPATH=examples RUNOFF_FASHION_BACKBONE=fashion-backbone.pt \\
        runoff train --dataset fashion-mnist --features train_backbone:backbone ...

``DATA`` holds ``FashionMNIST/raw/*-ubyte.gz`` (torchvision's layout; default ``$RUNOFF_DATA``,
else ``./data``). Debian's ``dataset-fashion-mnist`` package installs the four files under
``/usr/share/datasets/fashion-mnist``: link them into ``DATA/FashionMNIST/raw``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: Environment variable naming the weights file :func:`backbone` reads.
WEIGHTS_ENV = "RUNOFF_FASHION_BACKBONE"
DEFAULT_WEIGHTS = "fashion-backbone.pt"
EMBEDDING_SIZE = 128


def split(train):
    """``(public, private)`` halves of Fashion-MNIST's training set (a ``runoff`` Dataset):
    even file positions are public (the backbone's), odd ones private (the ensemble's)."""
    n = len(train)
    return train.subset(np.arange(0, n, 2)), train.subset(np.arange(1, n, 2))


def build_net() -> nn.Sequential:
    """The whole network (its last module is the classifier that :func:`backbone` drops)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, EMBEDDING_SIZE), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(EMBEDDING_SIZE, 10),
    )


def weights_path() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS)


def backbone() -> nn.Module:
    """The frozen extractor: the trained network without its classifier, in eval mode.

    Raises FileNotFoundError naming the weights file (and how to make it) when it is missing.
    """
    path = weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train it with examples/train_backbone.py --out {path}, "
                                f"or set {WEIGHTS_ENV} to the weights file")
    net = build_net()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    extractor = net[:-1]
    extractor.eval()
    extractor.requires_grad_(False)
    return extractor


def _tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, H, W, 1)`` -> float32 ``(n, 1, H, W)`` in [0, 1] (as runoff feeds an extractor)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            correct += int((net(_tensor(images[i:i + batch])).argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def train(public, *, epochs: int, batch_size: int, lr: float, seed: int, log=print) -> nn.Sequential:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_net()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = _tensor(public.images), torch.from_numpy(public.labels)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (0.5 if epoch >= max(1, epochs - 2) else 1.0)
        net.train()
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}, {time.perf_counter() - t0:.1f} s")
    net.eval()
    return net


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Train a small CNN backbone on the public half of Fashion-MNIST (even training-file positions) "
                    "and save its weights; train_backbone:backbone is then its frozen feature extractor.")
    parser.add_argument("--data-root", default=None,
                        help="folder holding FashionMNIST/raw/*-ubyte(.gz) (default: $RUNOFF_DATA, else ./data)")
    parser.add_argument("--out", default=None,
                        help=f"weights file to write (default: ${WEIGHTS_ENV}, else ./{DEFAULT_WEIGHTS})")
    parser.add_argument("--epochs", type=int, default=4, help="epochs over the 30,000 public images (default 4)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's rate, halved for the last 2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    from runoff.data.datasets import load_fashion_mnist
    from runoff.errors import RunoffError

    try:
        train_set, test_set = load_fashion_mnist(args.data_root)
    except RunoffError as exc:
        print(f"train_backbone.py: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    public, _ = split(train_set)
    out = Path(args.out) if args.out else weights_path()
    print(f"training on the public half: {len(public)} images (even positions), {args.epochs} epochs, "
          f"{args.threads} torch thread(s)", flush=True)
    t0 = time.perf_counter()
    net = train(public, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                log=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    acc = accuracy(net, test_set.images, test_set.labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(out)
    print(f"trained in {seconds:.0f} s; test accuracy {100 * acc:.1f}% on {len(test_set)} test images; "
          f"weights: {out}")
    print(f"use: PYTHONPATH=examples {WEIGHTS_ENV}={out} ... --features train_backbone:backbone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
