"""Certified partition ensembles of scikit-learn classifiers on two tabular data sets.

Breast cancer (569 rows, 30 features, 2 classes) and wine (178 rows, 13 features, 3 classes)
ship with scikit-learn. Each base model is a StandardScaler + LogisticRegression pipeline
fitted on its own subset of the training rows; the ensemble is aggregated by plurality vote
or Run-Off Election (ROE), with k models (DPA, d = 1) or k*d models (Finite Aggregation).

Certified accuracy at budget B: the share of test rows predicted correctly whose prediction
no attacker can change by inserting or removing B training rows (any rows, any labels in the
task's label space). With two classes ROE votes and certifies exactly like plurality.

    python examples/sklearn_tabular.py
"""

from __future__ import annotations

import time
import warnings

from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from runoff.sklearn import PartitionEnsembleClassifier

SETS = {
    # name: (loader, k, d, budgets)
    "breast cancer": (load_breast_cancer, 30, 4, [2, 5, 8, 11, 14]),
    "wine": (load_wine, 10, 4, [1, 2, 3, 4]),
}


def main():
    base = make_pipeline(StandardScaler(), LogisticRegression())
    for name, (loader, k, d, budgets) in SETS.items():
        X, y = loader(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
        single = base.fit(X_tr, y_tr).score(X_te, y_te)
        print(f"\n{name}: {len(y_tr)} training rows, {len(y_te)} test rows, "
              f"{len(set(y))} classes; one model on all rows: {single:.1%}")
        print(f"{'ensemble':<30}{'clean':>8}" + "".join(f"{'B=' + str(b):>8}" for b in budgets)
              + f"{'median':>8}{'time':>8}")
        for dd in (1, d):
            for agg in ("plurality", "roe"):
                clf = PartitionEnsembleClassifier(base, k=k, d=dd, aggregation=agg)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    clf.fit(X_tr, y_tr)
                pred, cert = clf.predict_certified(X_te)
                secs = time.perf_counter() - t0
                acc = clf.certified_accuracy(X_te, y_te, [0] + budgets)
                label = f"{clf.method_} k={k}" + (f" d={dd} ({k * dd} models)" if dd > 1 else "")
                med = int(sorted(cert)[len(cert) // 2])
                print(f"{label:<30}" + "".join(f"{a:>8.1%}" for a in acc) + f"{med:>8}{secs:>7.1f}s")


if __name__ == "__main__":
    main()
