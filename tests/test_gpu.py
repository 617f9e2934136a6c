"""GPU checks (``pytest -m gpu``; run by bench/gpu_check.sh on a machine with CUDA, skipped
elsewhere): the engine's CUDA path, fp16 loss scaling and the measured Jacobian choice on
the device, and CUDA device selection through ``mtlx run``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import methods
from methods.precision import LossScaler
from tests.engine_cases import TinyMTL, make_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def grads_on(device, name, level, dtype=torch.float64, amp=None, scaler=None):
    model = TinyMTL(3).to(device=device, dtype=dtype)
    x, y = (t.to(device=device, dtype=dtype) for t in make_data())
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        losses, rep = model.losses(x, y)
    res = methods.backward(methods.create(name, 3), losses.to(dtype), model.shared_parameters(),
                           model.task_parameters(), rep=rep, level=level, scaler=scaler)
    return torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]).cpu(), res


@pytest.mark.parametrize("name,level", [("pcgrad", "param"), ("cagrad", "param"),
                                        ("nash_mtl", "param"), ("imtl_g", "param"),
                                        ("db_mtl", "param"), ("mgda_ub", "rep"), ("famo", "param")])
def test_cuda_update_equals_cpu_update(name, level):
    cpu, _ = grads_on(torch.device("cpu"), name, level)
    gpu, res = grads_on(torch.device("cuda"), name, level)
    assert res.weights.device.type == "cuda"
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,level", [("pcgrad", "param"), ("cagrad", "param"),
                                        ("mgda_ub", "rep")])
def test_cuda_fp16_with_scaler_matches_fp32(name, level):
    dev = torch.device("cuda")
    ref, _ = grads_on(dev, name, level, dtype=torch.float32)
    got, res = grads_on(dev, name, level, dtype=torch.float32, amp=torch.float16,
                        scaler=LossScaler())
    assert not res.skipped
    assert float(got @ ref / (got.norm() * ref.norm())) > 0.98


def test_cuda_auto_jacobian_measures_once_and_logs():
    dev = torch.device("cuda")
    _, res = grads_on(dev, "pcgrad", "param", dtype=torch.float32)
    assert res.info["jacobian_batched"] in (0.0, 1.0)
    assert any(k[0].startswith("cuda") for k in methods.engine.jacobian_choices())


@pytest.mark.ray
@pytest.mark.parametrize("gpus", ["1", "0.5"])
def test_mtlx_run_selects_the_cuda_device(tmp_path, gpus):
    from orchestrator.cli import main

    rc = main(["run", "--benchmark", "multi_digits", "--methods", "ew,pcgrad", "--seeds", "0",
               "--epochs", "1", "--workers", "1", "--gpus-per-worker", gpus, "--out",
               str(tmp_path), "train.max_steps_per_epoch=20"])
    assert rc == 0
    runs = pd.read_parquet(tmp_path / "runs")
    assert (runs["status"] == "finished").all()
    assert runs["device"].str.startswith("cuda").all(), runs["device"].tolist()
