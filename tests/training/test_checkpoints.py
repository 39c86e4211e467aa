"""Chunk layout: existing checkpoint files keep their ranges; new chunks are balanced."""

import pytest

from runoff.errors import CheckpointError, InvalidParameterError
from runoff.training.checkpoints import chunk_layout, existing_ranges


def _touch(d, first, last):
    (d / f"models-{first:05d}-{last:05d}.pt").write_bytes(b"")


def _plain_layout(n, chunk_size, held, wanted):
    """Obvious version: held ranges as they are; the rest in runs of consecutive ids, each
    cut into the fewest pieces of at most chunk_size whose sizes differ by at most one."""
    out = [list(r) for r in held if set(r) & wanted]
    taken = {j for r in held for j in r}
    free = [j for j in range(n) if j in wanted and j not in taken]
    runs = []
    for j in free:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    for run in runs:
        pieces = -(-len(run) // chunk_size)
        sizes = [len(run) // pieces + (i < len(run) % pieces) for i in range(pieces)]
        start = 0
        for s in sizes:
            out.append(run[start:start + s])
            start += s
    return sorted(out)


@pytest.mark.parametrize("n,chunk_size,expected", [
    (13, 4, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]),
    (10, 10, [list(range(10))]),
    (10, 100, [list(range(10))]),
    (3, 1, [[0], [1], [2]]),
    (5, 2, [[0, 1], [2, 3], [4]]),
])
def test_new_chunks_are_balanced(n, chunk_size, expected):
    assert chunk_layout(n, chunk_size=chunk_size) == expected


def test_existing_checkpoints_keep_their_ranges(tmp_path):
    _touch(tmp_path, 2, 4)
    _touch(tmp_path, 8, 8)
    (tmp_path / "notes.txt").write_text("ignored")
    got = chunk_layout(12, chunk_size=3, checkpoint_dir=tmp_path)
    assert got == [[0, 1], [2, 3, 4], [5, 6, 7], [8], [9, 10, 11]]
    assert got == _plain_layout(12, 3, [range(2, 5), range(8, 9)], set(range(12)))
    # a model of a held range pulls in the whole range: a chunk trains as one
    assert chunk_layout(12, chunk_size=3, checkpoint_dir=tmp_path, model_ids=[3, 10]) == [[2, 3, 4], [10]]


@pytest.mark.parametrize("seed", range(30))
def test_layout_matches_the_plain_version(tmp_path, seed):
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 40)
    held, j = [], 0
    while j < n:
        size = rng.randint(1, 6)
        if rng.random() < 0.3:
            held.append(range(j, min(n, j + size)))
            _touch(tmp_path, j, min(n, j + size) - 1)
        j += size + rng.randint(0, 3)
    wanted = set(rng.sample(range(n), rng.randint(1, n)))
    cs = rng.randint(1, 9)
    got = chunk_layout(n, chunk_size=cs, checkpoint_dir=tmp_path, model_ids=wanted)
    assert got == _plain_layout(n, cs, held, wanted)
    covered = sorted(j for c in got for j in c)
    assert len(covered) == len(set(covered)) and wanted <= set(covered)
    assert all(c == list(range(c[0], c[-1] + 1)) for c in got)


def test_overlapping_or_foreign_checkpoints_are_refused(tmp_path):
    _touch(tmp_path, 0, 4)
    _touch(tmp_path, 3, 6)
    with pytest.raises(CheckpointError, match="both hold model 3"):
        existing_ranges(tmp_path, 10)
    (tmp_path / "models-00003-00006.pt").unlink()
    with pytest.raises(CheckpointError, match="do not fit a run of 4 models"):
        chunk_layout(4, chunk_size=2, checkpoint_dir=tmp_path)


def test_bad_chunk_size_or_ids():
    with pytest.raises(InvalidParameterError, match="chunk_size"):
        chunk_layout(4, chunk_size=0)
    with pytest.raises(InvalidParameterError, match=r"\[0, 4\)"):
        chunk_layout(4, chunk_size=2, model_ids=[4])
