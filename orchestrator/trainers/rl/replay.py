"""The replay buffer: one FIFO for all tasks, storing the task index and the true last
observation of a truncated episode; :func:`per_task_mean` turns per-sample losses into the
T per-task means the gradient methods see."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from orchestrator.trainers.rl.config import check_int


@dataclass
class Batch:
    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    task: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


class ReplayBuffer:
    """Uniform-sampling FIFO replay of (s, a, r, s', terminated, task) transitions.

    ``next_obs`` is whatever the environment's ``step`` returned — with explicit resets this
    is the true last observation of a truncated episode. ``terminated`` (not truncated) stops
    bootstrapping; Meta-World training episodes only truncate."""

    ARRAYS = ("obs", "action", "reward", "next_obs", "terminated", "task")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, seed: int = 0) -> None:
        check_int("capacity", capacity, 1)
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.task = np.zeros(capacity, dtype=np.int64)
        self.ptr = 0
        self.size = 0
        self.rng = np.random.default_rng([seed, 0xB0F])

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray, task: np.ndarray) -> None:
        """Append one transition per row (one per environment)."""
        n = len(obs)
        idx = (self.ptr + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.action[idx] = action
        self.reward[idx] = reward
        self.next_obs[idx] = next_obs
        self.terminated[idx] = terminated
        self.task[idx] = task
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return Batch(*(torch.from_numpy(getattr(self, k)[idx]) for k in self.ARRAYS))

    # -- checkpoint: the filled part of every array, plus pointer and sampler state --------

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k)[: self.size].copy() for k in self.ARRAYS},
                "ptr": self.ptr, "size": self.size, "capacity": self.capacity,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"the checkpointed replay buffer has capacity {state['capacity']}, this run "
                f"{self.capacity}: resume with the same buffer_size"
            )
        for k in self.ARRAYS:
            getattr(self, k)[: state["size"]] = state[k]
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        self.rng.bit_generator.state = state["rng"]


def per_task_mean(values: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Tensor[T]: the mean of ``values`` over each task's samples (0 for absent tasks)."""
    sums = torch.zeros(num_tasks, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, task, values)
    counts = torch.bincount(task, minlength=num_tasks).to(values.dtype)
    return sums / counts.clamp_min(1)

