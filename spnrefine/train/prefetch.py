"""Training batches, cut in the loop or ahead of it by worker processes.

A step's batch is a function of (seed, step) alone, so workers change when a batch is made,
never what it holds: a run with ``--workers`` equals one without, bit for bit. The workers
are spawned, not forked (a fork inherits OpenCV's and OpenMP's thread pools, which can hang
in the child, and a CUDA context that must not be touched there); each loads the data folders
itself, with the same split.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from spnrefine.train.data import Dataset, Recipe, load_dataset, sample_batch

# data folders, validation fraction, split seed, coarse-source patterns
Source = tuple[Sequence[str], float, int, tuple[str, ...]]
AHEAD = 4  # batches waiting per worker


@dataclass(frozen=True)
class Mix:
    """How a run mixes its data: the share of steps each data folder gets (``weights``, one
    per folder, None: alike), and how often a patch takes a real coarse map where its image
    has one (``real_share``, None: a real source counts as one choice beside the synthetic
    recipe), and that recipe's factors and clean share (``recipe``)."""

    weights: tuple[float, ...] | None = None
    real_share: float | None = None
    recipe: Recipe = Recipe()

    def pick(self, count: int, rng: np.random.Generator) -> int:
        if self.weights is None:
            return int(rng.integers(count))
        shares = np.asarray(self.weights, float)
        return int(rng.choice(count, p=shares / shares.sum()))


def step_batch(
    datasets: list[Dataset], seed: int, batch_size: int, tile: int, step: int, mix: Mix = Mix()
) -> dict[str, np.ndarray]:
    """The batch of ``step``: its data folder and patches both drawn from (seed, step)."""
    rng = np.random.default_rng([seed, step])
    dataset = datasets[mix.pick(len(datasets), rng)]
    return sample_batch(
        dataset, rng, batch_size, tile, real_share=mix.real_share, recipe=mix.recipe
    )


_worker: dict = {}


def _init_worker(source: Source, seed: int, batch_size: int, tile: int, mix: Mix) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core's worth of patch cutting per worker
    # A pool respawns a worker whose initializer raises, forever: keep the error and raise it
    # from the first batch instead, where the loop sees it.
    try:
        folders, val_fraction, split_seed, coarse_sources = source
        _worker["datasets"] = [
            load_dataset(d, val_fraction, split_seed, coarse_sources) for d in folders
        ]
    except Exception as err:
        _worker["error"] = err
    _worker["args"] = (seed, batch_size, tile)
    _worker["mix"] = mix


def _cut(step: int) -> dict[str, np.ndarray]:
    if "error" in _worker:
        raise _worker["error"]
    seed, batch_size, tile = _worker["args"]
    return step_batch(_worker["datasets"], seed, batch_size, tile, step, _worker["mix"])


def batches(
    datasets: list[Dataset],
    source: Source,
    seed: int,
    batch_size: int,
    tile: int,
    first: int,
    last: int,
    workers: int = 0,
    mix: Mix = Mix(),
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of steps ``first..last-1`` in order. With ``workers`` > 0, that many
    processes cut them ahead (at most ``AHEAD`` per worker waiting) from ``source``, which
    must load to ``datasets``; with 0, the caller's ``datasets`` are used in the loop."""
    if workers <= 0:
        for step in range(first, last):
            yield step_batch(datasets, seed, batch_size, tile, step, mix)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (source, seed, batch_size, tile, mix)) as pool:
        pending: deque = deque()
        upcoming = iter(range(first, last))
        for step in upcoming:
            pending.append(pool.apply_async(_cut, (step,)))
            if len(pending) >= AHEAD * workers:
                break
        while pending:
            batch = pending.popleft().get()
            step = next(upcoming, None)
            if step is not None:
                pending.append(pool.apply_async(_cut, (step,)))
            yield batch
