"""Trainers: one per benchmark kind, each given a :class:`~orchestrator.config.RunConfig` and
a :class:`~orchestrator.trainers.base.RunContext` (the contract: :mod:`.base`).

* :mod:`.supervised` — epoch-based multi-task training for every supervised benchmark;
* :mod:`.rl` — multi-task SAC on Meta-World (MT10 / MT1).

Layers: trainers import :mod:`orchestrator.config` and :mod:`orchestrator.results` only; the
run layer (:mod:`orchestrator.run`) picks a trainer by ``Benchmark.kind`` and calls it.
"""
