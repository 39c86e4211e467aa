"""Named configurations match the paper's settings (typed here from its tables, independently)."""

import json

import pytest

from runoff.certificates.methods import methods_for
from runoff.data.configs import CONFIGS, PAPER_RECIPES, describe_recipe, get_config
from runoff.errors import InvalidParameterError

# name: (dataset, k, d, kind, classes, budgets, first and last reported value per method)
EXPECTED = {
    "mnist-k1200": ("mnist", 1200, 1, "dpa", 10, (100, 200, 300, 400, 500), {"dpa": (92.11, 32.42), "dpa-roe": (92.38, 37.15)}),
    "cifar10-k50": ("cifar10", 50, 1, "dpa", 10, (5, 10, 15, 18, 20), {"dpa": (58.07, 19.36), "dpa-roe": (59.80, 21.30)}),
    "cifar10-k250": ("cifar10", 250, 1, "dpa", 10, (10, 20, 40, 50, 60), {"dpa": (44.31, 9.25), "dpa-roe": (46.14, 12.39)}),
    "gtsrb-k50": ("gtsrb", 50, 1, "dpa", 43, (5, 10, 15, 20, 22), {"dpa": (82.32, 37.73), "dpa-roe": (82.64, 39.18)}),
    "gtsrb-k100": ("gtsrb", 100, 1, "dpa", 43, (5, 15, 20, 25, 30), {"dpa": (46.16, 12.75), "dpa-roe": (46.09, 15.93)}),
    "mnist-k1200-fa-d16": ("mnist", 1200, 16, "fa", 10, (100, 200, 300, 400, 500), {"fa": (92.75, 31.97), "fa-roe": (92.80, 36.76)}),
    "mnist-k1200-fa-d32": ("mnist", 1200, 32, "fa", 10, (100, 200, 300, 400, 500), {"fa": (92.97, 31.09)}),
    "cifar10-k50-fa-d16": ("cifar10", 50, 16, "fa", 10, (5, 10, 15, 18, 20), {"fa": (60.55, 19.90), "fa-roe": (61.71, 22.08)}),
    "cifar10-k50-fa-d32": ("cifar10", 50, 32, "fa", 10, (5, 10, 15, 18, 20), {"fa": (61.31, 19.93), "fa-roe": (62.56, 21.97)}),
    "cifar10-k250-fa-d8": ("cifar10", 250, 8, "fa", 10, (10, 20, 40, 50, 60), {"fa": (45.38, 9.70), "fa-roe": (46.80, 13.06)}),
    "cifar10-k250-fa-d16": ("cifar10", 250, 16, "fa", 10, (10, 20, 40, 50, 60), {"fa": (46.52, 11.09), "fa-roe": (48.33, 14.64)}),
    "gtsrb-k50-fa-d16": ("gtsrb", 50, 16, "fa", 43, (5, 10, 15, 20, 22), {"fa": (82.71, 35.54), "fa-roe": (82.59, 38.89)}),
    "gtsrb-k50-fa-d32": ("gtsrb", 50, 32, "fa", 43, (5, 10, 15, 20, 22), {"fa": (83.52, 38.31), "fa-roe": (83.61, 41.61)}),
    "gtsrb-k100-fa-d16": ("gtsrb", 100, 16, "fa", 43, (5, 15, 20, 25, 30), {"fa": (48.19, 13.82), "fa-roe": (48.00, 16.32)}),
    "gtsrb-k100-fa-d32": ("gtsrb", 100, 32, "fa", 43, (5, 15, 20, 25, 30), {"fa": (48.39, 14.47), "fa-roe": (48.15, 17.41)}),
    "mnist-k1200-dpastar-d16": ("mnist", 1200, 16, "dpa*", 10, (100, 200, 300, 400, 500), {"dpa": (92.55, 41.32), "dpa-roe": (92.70, 44.81)}),
    "cifar10-k50-dpastar-d16": ("cifar10", 50, 16, "dpa*", 10, (5, 10, 15, 18, 20), {"dpa": (61.00, 25.97), "dpa-roe": (61.87, 27.47)}),
    "cifar10-k50-dpastar-d32": ("cifar10", 50, 32, "dpa*", 10, (5, 10, 15, 18, 20), {"dpa": (65.77, 46.95), "dpa-roe": (65.99, 47.61)}),
    "cifar10-k250-dpastar-d8": ("cifar10", 250, 8, "dpa*", 10, (10, 20, 40, 50, 60), {"dpa": (45.36, 11.60), "dpa-roe": (47.14, 15.02)}),
    "cifar10-k250-dpastar-d16": ("cifar10", 250, 16, "dpa*", 10, (10, 20, 40, 50, 60), {"dpa": (45.45, 11.82), "dpa-roe": (46.88, 15.04)}),
    "gtsrb-k50-dpastar-d16": ("gtsrb", 50, 16, "dpa*", 43, (5, 10, 15, 20, 22), {"dpa": (83.71, 48.61), "dpa-roe": (83.67, 49.33)}),
    "gtsrb-k50-dpastar-d32": ("gtsrb", 50, 32, "dpa*", 43, (5, 10, 15, 20, 22), {"dpa": (83.79, 48.91), "dpa-roe": (83.67, 49.61)}),
    "gtsrb-k100-dpastar-d16": ("gtsrb", 100, 16, "dpa*", 43, (5, 15, 20, 25, 30), {"dpa": (47.64, 16.19), "dpa-roe": (47.50, 19.26)}),
    "gtsrb-k100-dpastar-d32": ("gtsrb", 100, 32, "dpa*", 43, (5, 15, 20, 25, 30), {"dpa": (47.82, 16.34), "dpa-roe": (47.66, 19.33)}),
}


def test_every_setting_of_the_paper_is_there_and_nothing_else():
    assert set(CONFIGS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configuration_matches_the_paper(name):
    ds, k, d, kind, classes, budgets, ends = EXPECTED[name]
    c = get_config(name)
    assert (c.dataset, c.k, c.d, c.kind, c.n_classes, c.budgets) == (ds, k, d, kind, classes, budgets)
    assert set(c.reference) == set(ends)
    for method, (first, last) in ends.items():
        values = c.reference[method]["values"]
        assert len(values) == len(budgets)
        assert (values[0], values[-1]) == (first, last)
    assert c.n_models == (k if kind == "dpa" else k * d)
    assert set(c.reference) <= set(methods_for(c.d if kind == "fa" else 1))


def test_roe_differences_match_the_paper_highlights():
    # Table 3 prints DPA+ROE's gain over DPA: +4.73 points for MNIST at B=500.
    c = get_config("mnist-k1200")
    assert round(c.reference["dpa-roe"]["values"][-1] - c.reference["dpa"]["values"][-1], 2) == 4.73


def test_unknown_configuration_suggests_close_names():
    with pytest.raises(InvalidParameterError, match="did you mean cifar10-k50"):
        get_config("cifar10-k5O")


# ------------------------------------------------------------------ the published training recipes

def _published_lrs(epochs=200, drops=(60, 120, 160)):
    """The learning rate of each epoch in the published loop: x0.2 after each drop epoch ends."""
    lr, out = 0.1, []
    for epoch in range(epochs):
        out.append(lr)  # the epoch's steps
        if epoch in drops:
            lr *= 0.2
    return out


def _expand(lr_by_epoch):
    return [lr for first, last, lr in lr_by_epoch for _ in range(first, last + 1)]


# Read from the published scripts: crop size and flip per data set (RandomCrop(size, padding=4),
# RandomHorizontalFlip for CIFAR-10 only).
PUBLISHED_CROP = {"mnist": (28, False), "cifar10": (32, True), "gtsrb": (48, False)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configuration_shows_the_published_training(name):
    c = get_config(name)
    t = c.training
    size, flip = PUBLISHED_CROP[c.dataset]
    assert (t["model"], t["epochs"], t["batch_size"]) == ("nin", 200, 128)
    assert t["lr_by_epoch"] == [[0, 60, 0.1], [61, 120, 0.02], [121, 160, 0.004], [161, 199, 0.0008]]
    assert _expand(t["lr_by_epoch"]) == pytest.approx(_published_lrs(), rel=1e-12)
    assert "after epochs 60, 120, 160 end" in t["schedule"]
    assert f"random {size}x{size} crop of the image zero-padded by 4 pixels" in t["augmentation"]
    assert ("horizontal flip" in t["augmentation"]) == flip and ("no flip" in t["augmentation"]) == (not flip)
    assert t["init"] == "pytorch" and "kaiming_uniform_(a=sqrt(5))" in t["init_rule"]
    assert "sample std (n - 1" in t["normalisation"]
    assert "SGD, momentum 0.9, Nesterov, weight decay 0.0005" in t["optimizer"]


def test_describe_recipe_counts_repeated_milestones_and_old_recipes():
    r = describe_recipe({"model": "small", "epochs": 3, "batch_size": 8, "lr": 0.1, "milestones": [1, 1, 2]})
    assert r["lr_by_epoch"] == [[0, 0, 0.1], [1, 1, 0.004], [2, 2, 0.0008]]
    assert r["init"] == "rotnet"  # recorded before runoff named the rule: RotNet's was used
    assert describe_recipe({**PAPER_RECIPES["mnist"], "milestones": ()})["schedule"] == "lr 0.1 for all 200 epochs"


def test_configs_json_gives_each_recipe(capsys):
    from runoff.cli import main

    assert main(["configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    for name, entry in listed.items():
        assert entry["training"] == json.loads(json.dumps(get_config(name).training))
    cifar = listed["cifar10-k50"]["training"]
    assert cifar["recipe"]["augment"] == "crop-flip" and cifar["recipe"]["milestones"] == [61, 121, 161]
    assert listed["gtsrb-k50"]["training"]["recipe"]["augment"] == "crop"


@pytest.mark.parametrize("dataset", sorted(PAPER_RECIPES))
def test_trainer_recipes_are_the_published_ones(dataset):
    pytest.importorskip("torch")
    from runoff.training.recipe import recipe_for

    recipe = recipe_for(dataset)
    assert recipe.to_dict() == {**PAPER_RECIPES[dataset], "milestones": [61, 121, 161]}
    assert [recipe.lr_at(e) for e in range(200)] == pytest.approx(_published_lrs(), rel=1e-12)
    _size, flip = PUBLISHED_CROP[dataset]
    assert (recipe.augment, recipe.crop_padding, recipe.init) == ("crop-flip" if flip else "crop", 4, "pytorch")


def test_training_settings_are_the_librarys_rule():
    """The rule `runoff train --config` applies, for Python callers too, in their own words."""
    import pytest

    from runoff.data.configs import check_data_options, training_settings
    from runoff.errors import InvalidParameterError

    assert training_settings("cifar10-k50-fa-d16") == {"dataset": "cifar10", "k": 50, "d": 16, "versions": None}
    assert training_settings("cifar10-k50-dpastar-d16")["versions"] == 16
    assert training_settings(k=5) == {"dataset": "digits", "k": 5, "d": 1, "versions": None}
    assert training_settings("cifar10-k50", k=50, dataset="cifar10")["k"] == 50  # agreeing is fine
    with pytest.raises(InvalidParameterError, match=r"^k=4 contradicts config='cifar10-k50' \(dataset cifar10"):
        training_settings("cifar10-k50", k=4)
    with pytest.raises(InvalidParameterError, match=r"^--k 4 contradicts --config cifar10-k50"):
        training_settings("cifar10-k50", k=4, names={"k": "--k", "config": "--config"})
    with pytest.raises(InvalidParameterError, match="give k .* or config NAME"):
        training_settings()
    with pytest.raises(InvalidParameterError, match="versions .DPA\\*. and d .FA. cannot be combined"):
        training_settings(k=3, d=2, versions=2)
    with pytest.raises(InvalidParameterError, match="seed_version picks one seed version"):
        training_settings(k=3, versions=2, seed_version=2)
    with pytest.raises(InvalidParameterError, match="image_size applies to folder: data sets, not to digits"):
        check_data_options("digits", image_size=(8, 8))
    with pytest.raises(InvalidParameterError, match="download fetches"):
        check_data_options("npz:x.npz", download=True)
    check_data_options("folder:/x", image_size=(8, 8))
