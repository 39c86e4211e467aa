"""Certified-accuracy summaries: budgets, tables and JSON-ready dictionaries."""

from __future__ import annotations

import numpy as np

from ..certificates import Certification, certified_accuracy
from ..errors import require

__all__ = [
    "default_budgets",
    "summarize",
    "accuracy_table",
    "table_caption",
    "markdown_table",
    "plot_certified_accuracy",
    "plot_certificate_histogram",
    "require_matplotlib",
]


def require_matplotlib(purpose: str = "plotting"):
    """Import matplotlib, or raise :class:`~runoff.errors.MissingDependencyError` naming the
    extra that installs it. Callers that write several files call it before the first one."""
    return require("matplotlib", purpose)


def default_budgets(results: dict[str, Certification], labels=None, *, n_budgets: int = 8) -> np.ndarray:
    """About ``n_budgets`` evenly spaced integer budgets from 0 to the largest useful certificate.

    "Useful" means on a correctly predicted point when labels are given (a larger budget
    would only show 0%), otherwise on any point.
    """
    top = 0
    for res in results.values():
        cert = res.certificates
        if labels is not None:
            cert = cert[res.predictions == np.asarray(labels)]
        if cert.size:
            top = max(top, int(cert.max()))
    return np.unique(np.round(np.linspace(0, top, n_budgets + 1)).astype(np.int64))


def summarize(results: dict[str, Certification], labels, budgets) -> dict:
    """JSON-ready summary: per method clean accuracy, certified accuracy per budget, and
    certificate statistics (over all points, labels aside)."""
    budgets = np.asarray(budgets, dtype=np.int64)
    out = {"budgets": budgets.tolist(), "methods": {}}
    for method, res in results.items():
        entry = {
            "median_certificate": float(np.median(res.certificates)),
            "max_certificate": int(res.certificates.max()),
        }
        if labels is not None:
            acc = certified_accuracy(res.predictions, res.certificates, labels, budgets)
            entry["clean_accuracy"] = float(np.mean(res.predictions == np.asarray(labels)))
            entry["certified_accuracy"] = {int(b): float(a) for b, a in zip(budgets, acc)}
        else:
            frac = (res.certificates[None, :] >= budgets[:, None]).mean(axis=1)
            entry["certified_fraction"] = {int(b): float(f) for b, f in zip(budgets, frac)}
        out["methods"][method] = entry
    return out


def accuracy_table(summary: dict):
    """A rich Table: one row per budget, one column per method, values in percent.

    With labels the first row is the clean accuracy (which equals certified accuracy at B = 0,
    since certificates are never negative).
    """
    from rich.table import Table

    methods = summary["methods"]
    labelled = all("certified_accuracy" in m for m in methods.values())
    key = "certified_accuracy" if labelled else "certified_fraction"
    table = Table()
    table.add_column("budget B", justify="right")
    for method in methods:
        table.add_column(method, justify="right")
    if labelled:
        table.add_row("clean", *(f"{100 * m['clean_accuracy']:.2f}%" for m in methods.values()))
    for b in summary["budgets"]:
        if labelled and b == 0:
            continue  # the clean row already says it
        table.add_row(str(b), *(f"{100 * m[key][b]:.2f}%" for m in methods.values()))
    table.add_row("median cert.", *(f"{m['median_certificate']:g}" for m in methods.values()))
    return table


def table_caption(summary: dict) -> str:
    """What the numbers of :func:`accuracy_table` mean."""
    if all("certified_accuracy" in m for m in summary["methods"].values()):
        return "certified accuracy at budget B: predicted correctly with certificate >= B poisoned samples"
    return "no labels in the file: fraction of points with certificate >= B poisoned samples"


def _save_figure(path, draw, *, xlabel: str, ylabel: str, title: str | None):
    """Draw on one fresh axes with ``draw(ax)`` and save a PNG (matplotlib, Agg backend)."""
    matplotlib = require_matplotlib("writing a plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_certified_accuracy(results: dict[str, Certification], labels, path, *, title: str | None = None,
                            collective: dict | None = None):
    """Save a PNG of certified accuracy (%) against budget, one curve per method.

    Each curve runs from budget 0 to the largest certificate of a correct prediction, at every
    integer budget. ``collective`` (from :func:`runoff.reporting.collective_table.collective_summary`)
    adds each method's collective certified accuracy as markers on a dashed line. Needs
    matplotlib.
    """
    labels = np.asarray(labels)
    budgets = np.arange(int(default_budgets(results, labels)[-1]) + 2)

    def draw(ax):
        for method, res in results.items():
            acc = certified_accuracy(res.predictions, res.certificates, labels, budgets)
            line, = ax.step(budgets, 100 * acc, where="post", label=method)
            if collective and method in collective["methods"]:
                points = collective["methods"][method]["collective"]
                ax.plot(list(points), [100 * v for v in points.values()], "o--", color=line.get_color(),
                        label=f"{method}, collective")
        ax.set_ylim(0, 100)
        ax.set_xlim(0, budgets[-1])

    return _save_figure(path, draw, xlabel="budget B (poisoned training samples)",
                        ylabel="certified accuracy (%)", title=title)


def markdown_table(summary: dict) -> str:
    """The certified-accuracy table of :func:`accuracy_table` as GitHub Markdown."""
    methods = summary["methods"]
    labelled = all("certified_accuracy" in m for m in methods.values())
    key = "certified_accuracy" if labelled else "certified_fraction"
    lines = ["| budget B | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    if labelled:
        lines.append("| clean | " + " | ".join(f"{100 * m['clean_accuracy']:.2f}%" for m in methods.values()) + " |")
    for b in summary["budgets"]:
        if labelled and b == 0:
            continue
        cells = (f"{100 * m[key][b if b in m[key] else str(b)]:.2f}%" for m in methods.values())
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append("| median cert. | " + " | ".join(f"{m['median_certificate']:g}" for m in methods.values()) + " |")
    return "\n".join(lines) + "\n\n" + table_caption(summary) + "\n"


def plot_certificate_histogram(results: dict[str, Certification], labels, path, *, title: str | None = None):
    """Save a PNG histogram of the certificates of correctly predicted points, one series per method."""
    labels = np.asarray(labels)
    bins = np.arange(max(int(r.certificates.max()) for r in results.values()) + 2) - 0.5

    def draw(ax):
        for method, res in results.items():
            ax.hist(res.certificates[res.predictions == labels], bins=bins, histtype="step", label=method)

    return _save_figure(path, draw, xlabel="certificate (poisoned training samples tolerated), correct predictions only",
                        ylabel="test points", title=title)
