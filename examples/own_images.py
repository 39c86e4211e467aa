"""Certify a classifier on your own image folder, end to end.

Writes scikit-learn's digits as PNG files in the class-per-folder layout runoff reads
(``OUT/images/{train,test}/<class>/NNNN.png``), then trains a DPA ensemble on them
(``dataset="folder:..."``; the small CNN of the digits recipe, since the command line's
default for one's own data is the paper's NiN recipe, slow on a CPU), certifies it with
``runoff evaluate`` and predicts one of the PNG files with ``runoff predict``.

    python examples/own_images.py [OUT]     # default OUT: runs/own-images
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_images(folder: Path) -> None:
    digits = load_digits()
    pixels = (digits.images * 255 / 16).round().astype(np.uint8)  # 0..16 -> 0..255
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        split = "test" if i % 5 == 4 else "train"
        path = folder / split / NAMES[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


def runoff(*args: str) -> None:
    print("$ runoff " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runoff", *args], check=True)
    print(f"({time.perf_counter() - t0:.1f} s)\n", flush=True)


def main(out: Path) -> None:
    from runoff.data import load_dataset
    from runoff.training.runs import train_run
    from runoff.training.trainer import recipe_for

    images, run = out / "images", out / "dpa"
    if not images.exists():
        write_images(images)
    data = f"folder:{images}"
    for attempt in ("first load (decodes every PNG)", "second load (the decode cache)"):
        t0 = time.perf_counter()
        train, test = load_dataset(data)
        print(f"{attempt}: {len(train)} + {len(test)} images, {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    res = train_run(run, dataset=data, k=20, recipe=recipe_for("digits", epochs=30), progress=False)
    print(f"trained {res.summary.n_models} models in {time.perf_counter() - t0:.1f} s; classes "
          f"{res.plan.training['class_names']}\n")
    runoff("evaluate", str(run))
    sample = sorted((images / "test" / "seven").glob("*.png"))[0]
    runoff("predict", str(run), str(sample))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/own-images"))
