"""`runoff predict`, `runoff models` and `runoff configs`."""

from __future__ import annotations

import json

from ..data.configs import CONFIGS
from ..errors import require
from ..run.logits import save_certificates
from ..training.ensemble import Ensemble
from .options import _check_device, _check_out_file, _method_name


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict and certify new inputs with a trained run",
        description=(
            "Load a trained run folder (plan.json and its final checkpoints; a DPA* run sums its seed versions), "
            "evaluate every base model on new inputs with its own per-subset normalisation, aggregate with the "
            "run's method and certify each prediction. INPUTS: one .npy/.npz file of uint8 images (N, H, W, C) "
            "as the data set loader gives them, or image files (PNG, ...) and folders of them (every image file "
            "in the folder, sorted by name; a folder of class subfolders, like a folder: data set's test/, gives "
            "each image the class its subfolder names, shown beside the prediction with the accuracy). Image "
            "files are resized as the run resized its training images (--image-size); arrays are not."
        ),
    )
    p.add_argument("run", help="run folder written by runoff train")
    p.add_argument("inputs", nargs="+", help="a .npy/.npz array of images, or image files and folders of images")
    p.add_argument("--method", "-m", default=None, type=_method_name,
                   help="dpa, dpa-roe, fa or fa-roe; default dpa-roe for d = 1, fa-roe for d > 1")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default cpu")
    p.add_argument("--out", default=None, help="write predictions and certificates to this .npz file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_predict, tunes_allocator=True)


def _cmd_predict(args) -> int:
    require("torch", "runoff predict")
    _check_device(args.device)
    if args.out:
        _check_out_file(args.out)

    ens = Ensemble.load(args.run, device=args.device)
    inputs = ens.read_inputs(args.inputs)
    res = ens.certify(inputs.images, method=args.method)
    pred, cert = res.predictions.tolist(), res.certificates.tolist()
    out = {"run": str(args.run), "method": res.method, "k": ens.plan.k, "d": ens.d, "n_models": ens.n_models,
           "n_classes": ens.n_classes, "inputs": inputs.names, "predictions": pred, "certificates": cert}
    if ens.class_names:  # folder: data sets name their classes
        out["classes"] = [ens.class_names[p_] for p_ in pred]
    truth = ens.labels_of(inputs.classes)  # images of class subfolders named as the run's classes
    if truth is not None:
        out["true_labels"] = truth.tolist()
        if ens.class_names:
            out["true_classes"] = [ens.class_names[t] for t in out["true_labels"]]
        out["correct"] = int((res.predictions == truth).sum())
        out["accuracy"] = out["correct"] / len(pred)
    if ens.versions > 1:
        out["versions"] = ens.versions
    if args.out:
        out["out"] = str(save_certificates(args.out, {res.method: res}))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_predictions(args, ens, out)
    _print_truth_note(ens, inputs.classes, out)
    if args.out:
        print(f"wrote {out['out']}")
    return 0


def _print_predictions(args, ens, out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def label(i: int) -> str:
        return f"{i} ({ens.class_names[i]})" if ens.class_names else str(i)

    star = f", DPA* of {ens.versions} versions" if ens.versions > 1 else ""
    table = Table(title=f"{args.run}: {ens.plan.dataset}, k={ens.plan.k}, d={ens.d}{star}, {out['method']}")
    table.add_column("input")
    table.add_column("prediction", justify="right")
    truth = out.get("true_labels")
    if truth is not None:
        table.add_column("true class", justify="right")
    table.add_column("certificate", justify="right")
    for i, (name, p_, c_) in enumerate(zip(out["inputs"], out["predictions"], out["certificates"])):
        table.add_row(name, label(p_), *([label(truth[i])] if truth is not None else []), str(c_))
    console = Console()
    console.print(table)
    console.print("certificate: training samples an attacker may insert or remove without changing the prediction",
                  soft_wrap=True)


def _print_truth_note(ens, classes, out: dict) -> None:
    """The accuracy when the inputs' class subfolders name their true classes, or why there is none."""
    n = len(out["predictions"])
    if "accuracy" in out:
        print(f"accuracy: {out['correct']} of {n} correct ({100 * out['accuracy']:.1f}%), "
              "the true class of each image being its subfolder's name")
        return
    folders = sorted({c for c in classes if c is not None})
    if not folders:
        return
    unknown = [c for c in folders if c not in ens.label_names]
    why = (f"subfolder(s) {', '.join(unknown[:5])} are not among the run's classes "
           f"({', '.join(ens.label_names[:10])}{' ...' if ens.n_classes > 10 else ''})" if unknown
           else "some inputs are not in a class subfolder")
    print(f"no accuracy: {why}")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the base-model architectures (--model)",
                       description="The architectures runoff trains, batched, with their size for an image shape.")
    p.add_argument("--image-shape", default="32x32x3", metavar="HxWxC",
                   help="image size and channels the sizes are given for; default 32x32x3")
    p.add_argument("--classes", type=int, default=10, help="number of classes; default 10")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    require("torch", "runoff models")
    from ..training.models import architecture_catalog  # (lazy: imports torch)

    catalog = architecture_catalog(args.image_shape, args.classes)
    if args.json:
        print(json.dumps(catalog, indent=2))
        return 0
    for name, row in catalog["models"].items():
        print(f"{name:8s} {row['parameters']:>10,} parameters   {row['about']}")
    print("your own: --model package.module:function, a factory(in_shape, n_classes) returning a torch.nn.Module")
    return 0


def _add_configs(sub) -> None:
    p = sub.add_parser("configs", help="list the paper's named configurations (for runoff train --config)",
                       description="Every setting of the paper's Tables 1-5: data set, k, d, kind, budgets and the "
                                   "paper's certified accuracy at them.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_configs)


def _cmd_configs(args) -> int:
    if args.json:
        print(json.dumps({n: {"dataset": c.dataset, "k": c.k, "d": c.d, "kind": c.kind, "models": c.n_models,
                              "budgets": list(c.budgets), "paper": c.reference, "training": c.training}
                          for n, c in CONFIGS.items()}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(caption="--json also gives the paper's certified accuracy at each budget, and the published "
                          "training recipe of each data set (schedule, augmentation, initialisation)")
    table.add_column("name", no_wrap=True)
    for col in ("data set", "k", "d", "kind", "models", "budgets", "paper figures for"):
        table.add_column(col, no_wrap=col != "paper figures for")
    for c in CONFIGS.values():
        table.add_row(c.name, c.dataset, str(c.k), str(c.d), c.kind, str(c.n_models),
                      "/".join(map(str, c.budgets)), ", ".join(c.reference))
    console = Console()
    console.width = max(console.width, 110)  # never squeeze names when piped
    console.print(table)
    return 0
