"""Certify a classifier on your own image folder, end to end, and update it when files change.

Writes scikit-learn's digits as PNG files in the class-per-folder layout runoff reads
(``OUT/images/{train,test}/<class>/NNNN.png``), then, with the command line:

1. trains a DPA ensemble on them (``--dataset folder:...``, ``--model small``: the default
   recipe for one's own data is the paper's NiN, slow on a CPU);
2. runs the same command again (nothing left to train: it shows the decode cache);
3. certifies it (``runoff evaluate``);
4. deletes one training image (a deletion request) and runs ``runoff update``, which retrains
   only the chunk holding the model whose subset lost it;
5. trains a new run from scratch on the changed folder, for the time it takes and to show
   that the update gave the same models (equal logits, bit for bit);
6. predicts one of the PNG files (``runoff predict``).

    python examples/own_images.py [OUT]     # default OUT: runs/own-images
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    from PIL import Image
    from sklearn.datasets import load_digits
except ImportError as exc:  # the example's own needs, said in one line rather than a traceback
    sys.exit(f"own_images.py: error: {exc.name} is missing; pip install 'runoff[train]' (Pillow, scikit-learn)")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# 20 models in chunks of 4: an update retrains the 4 models of a changed model's chunk (a
# chunk trains as one computation); bigger chunks train faster, smaller ones update faster
TRAIN = ["--k", "20", "--model", "small", "--epochs", "30", "--lr", "0.1", "--batch-size", "16",
         "--chunk-size", "4", "--no-progress"]


def write_images(folder: Path) -> None:
    digits = load_digits()
    pixels = (digits.images * 255 / 16).round().astype(np.uint8)  # 0..16 -> 0..255
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        split = "test" if i % 5 == 4 else "train"
        path = folder / split / NAMES[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


class CommandFailed(Exception):
    """A runoff command failed; it has said why on stderr."""


def runoff(*args: str) -> float:
    """Run one runoff command, show it and its output; its wall time in seconds."""
    print("$ runoff " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    status = subprocess.run([sys.executable, "-m", "runoff", *args]).returncode
    if status != 0:
        raise CommandFailed(f"`runoff {args[0]}` failed (exit status {status}; its error is above)")
    seconds = time.perf_counter() - t0
    print(f"({seconds:.1f} s)\n", flush=True)
    return seconds


def main(out: Path) -> None:
    images, run, fresh = out / "images", out / "dpa", out / "dpa-fresh"
    for folder in (images, run, fresh):  # start clean: the timings are of a first run
        shutil.rmtree(folder, ignore_errors=True)
    write_images(images)
    data = f"--dataset=folder:{images}"
    times = {"first run (decodes every PNG, trains)": runoff("train", data, *TRAIN, "--out", str(run)),
             "second run (decode cache, nothing to train)": runoff("train", data, *TRAIN, "--out", str(run))}
    runoff("evaluate", str(run), "--method", "dpa,dpa-roe")
    deleted = sorted((images / "train" / "three").glob("*.png"))[0]
    print(f"deleting {deleted.relative_to(out)} (a deletion request)\n")
    deleted.unlink()
    times["update after deleting one image"] = runoff("update", str(run), "--no-progress")
    times["full retrain on the changed folder"] = runoff("train", data, *TRAIN, "--out", str(fresh))
    same = np.array_equal(np.load(run / "logits.npz")["scores"], np.load(fresh / "logits.npz")["scores"])
    print(f"update and full retrain give the same logits, bit for bit: {same}\n")
    sample = sorted((images / "test" / "seven").glob("*.png"))[0]
    runoff("predict", str(run), str(sample))
    for what, seconds in times.items():
        print(f"{what:46s} {seconds:5.1f} s")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="own_images.py",
        description="Write scikit-learn's digits as a folder of PNG files, then train, certify, update and "
                    "predict on it with the runoff command line (under a minute on 2 idle CPU cores; "
                    "docs/own-data.md has the timings).",
    )
    parser.add_argument("out", nargs="?", default="runs/own-images", type=Path, metavar="OUT",
                        help="folder for the images and the runs (its images/, dpa/ and dpa-fresh/ are "
                             "replaced); default runs/own-images")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"OUT {args.out}: exists and is not a folder")
    return args


if __name__ == "__main__":
    args = parse_args()
    try:
        main(args.out)
    except (CommandFailed, OSError) as exc:  # one line, as runoff itself says it
        sys.exit(f"own_images.py: error: {exc}")
