"""A plain, one-model-at-a-time transcription of the training loop, the trainer's exactness reference."""

import torch
import torch.nn.functional as F

from runoff.training.augment import augment_batch, draw_epoch
from runoff.training.batched_net import BatchedNet
from runoff.training.chunk import model_seed
from runoff.training.models import architecture


def _sequential_reference(plan, train, recipe, j, seed_version=1):
    """Plain one-model training loop: torch.nn layers, torch.optim.SGD, model j alone."""
    canon = plan.canonical(train)
    spec = architecture(recipe.model, in_channels=plan.image_shape[2], n_classes=plan.n_classes)
    g = torch.Generator().manual_seed(model_seed(j, seed_version))
    model = BatchedNet(spec, 1).init_([g], rule=recipe.init).extract(0)  # same initial weights, same draws
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    dtype = torch.get_default_dtype()
    X = torch.from_numpy(canon.images.transpose(0, 3, 1, 2).copy()).to(dtype) / 255
    Y = torch.from_numpy(canon.labels)
    sub = torch.from_numpy(plan.subsets[j])
    mean = torch.tensor(plan.mean[j], dtype=dtype)[None, :, None, None]
    std = torch.tensor(plan.std[j], dtype=dtype)[None, :, None, None]
    model.train()
    for epoch in range(recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(epoch)
        perm, offs, flips = draw_epoch(g, len(sub), recipe)
        for s in range(0, len(sub), recipe.batch_size):
            rows = sub[perm[s:s + recipe.batch_size]]
            xb = X[rows]
            if recipe.augment != "none":
                xb = augment_batch(xb, offs[s:s + recipe.batch_size], flips[s:s + recipe.batch_size],
                                   recipe.crop_padding)
            loss = F.cross_entropy(model((xb - mean) / std), Y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.state_dict()
