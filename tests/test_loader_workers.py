"""Loader processes change speed, never batches: persistent workers over several passes, the
resolved ``train.loader_workers``, and a whole run with workers equal to one without."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import envs
from envs._sampling import worker_options
from envs.fixtures.dense import write_nyuv2
from envs.fixtures.files import write_celeba
from orchestrator import cli
from orchestrator.config import RunConfig, TrainConfig
from orchestrator.trainers.base import MAX_AUTO_LOADER_WORKERS, loader_options


def _passes(loader, epochs):
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out.append([b for b in loader])
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("name", ["nyuv2", "celeba"])
def test_persistent_workers_give_the_same_passes_in_any_order(tmp_path, name):
    if name == "nyuv2":
        bench = envs.create("nyuv2", root=write_nyuv2(tmp_path / "d", n_train=9, n_test=2))
        assert bench.augment  # per-example random crops/flips: must not depend on workers
    else:
        write_celeba(tmp_path / "d", seed=1)
        bench = envs.create("celeba", root=tmp_path / "d")
    plain = bench.make_loader("train", 4, shuffle=True, seed=3)
    pooled = bench.make_loader("train", 4, shuffle=True, seed=3, num_workers=2)
    assert pooled.persistent_workers and not plain.persistent_workers
    # passes 0, 1, then a resume at pass 1 again, then 2: same batches as without workers
    want, got = _passes(plain, [0, 1, 1, 2]), _passes(pooled, [0, 1, 1, 2])
    assert _same(want, got)
    assert not _same(want[0], want[1])  # the passes really differ (shuffle, augmentation)


def test_worker_options_refuse_nonsense():
    with pytest.raises(ValueError, match="non-negative integer"):
        worker_options(-1)
    with pytest.raises(ValueError, match="non-negative integer"):
        worker_options(True)
    assert worker_options(0) == {"num_workers": 0, "pin_memory": False}
    assert worker_options(3, True)["prefetch_factor"] == 2


class _OldPlugin:
    """A plugin benchmark whose make_loader predates the loader keywords."""

    def make_loader(self, split, batch_size, *, shuffle=False, seed=0, rank=0, world_size=1,
                    drop_last=False):
        raise AssertionError("not called")


def test_loader_options_follow_the_device_and_the_cpus():
    bench = envs.create("multi_digits")
    cfg = RunConfig(benchmark="multi_digits", method="ew", seed=0, cpus_per_worker=4)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_options(bench, cfg, cpu) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(bench, cfg, cuda) == {"num_workers": 3, "pin_memory": True}
    big = RunConfig(benchmark="multi_digits", method="ew", seed=0, cpus_per_worker=64)
    assert loader_options(bench, big, cuda)["num_workers"] == MAX_AUTO_LOADER_WORKERS
    two = RunConfig(benchmark="multi_digits", method="ew", seed=0, cpus_per_worker=1,
                    train=TrainConfig(loader_workers=2))
    assert loader_options(bench, two, cpu) == {"num_workers": 2, "pin_memory": False}
    assert loader_options(_OldPlugin(), two, cuda) == {}
    # speed only: the run id does not change with the loader
    assert two.run_id == RunConfig(benchmark="multi_digits", method="ew", seed=0).run_id


def test_a_run_with_loader_workers_is_the_run_without(tmp_path):
    root = write_nyuv2(tmp_path / "nyu", n_train=6, n_test=2)
    base = ["run", "--benchmark", "nyuv2", "--methods", "ew", "--seeds", "0", "--epochs", "2",
            "--workers", "0", "--data-root", str(root), "bench_options.width=0.0625",
            "train.batch_size=2"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "b"), "train.loader_workers=2"]) == 0
    a, b = (pd.read_parquet(tmp_path / d / "metrics") for d in "ab")
    assert a.run_id.unique().tolist() == b.run_id.unique().tolist()
    keys = ["split", "epoch", "task", "metric"]
    a, b = (m[m.metric != "epoch_time_s"].sort_values(keys).reset_index(drop=True) for m in (a, b))
    assert len(a) > 0
    pd.testing.assert_series_equal(a.value, b.value)
