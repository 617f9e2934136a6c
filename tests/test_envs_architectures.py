"""envs/architectures: LibMTL's eight architectures on the benchmarks' encoders.

Parameter counts and output shapes are pinned to LibMTL's own classes run on the same
encoders and heads (LibMTL commit 4336804847eaa5e0b924b743d76beec7ac3fdc97; how:
docs/architectures.md §Checked against LibMTL), with independent arithmetic for the
staged architectures on multi_digits, which LibMTL does not build (no ResNet there). The
shared / task split is checked by what gradients reach, and every architecture takes
optimiser steps through ``methods.backward``."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import types

import pytest
import torch

import envs
import methods
from envs import architectures as A
from envs.fixtures import dense as dfx
from envs.fixtures import files as ffx

TINY = 1 / 16
EXPERTS = {"mmoe": {"num_experts": 2}, "cgc": {"num_experts": 1}, "ple": {"num_experts": 1},
           "dselect_k": {"num_experts": 4, "num_nonzeros": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return envs.create("multi_digits", n_train=32, n_val=8, n_test=8)


@pytest.fixture(scope="module")
def office_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("office31")
    ffx.write_office(root, "office31", (6, 5, 7), seed=2)
    return root


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    return dfx.write_nyuv2(tmp_path_factory.mktemp("nyu"), n_train=4, n_test=2)


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _start_epoch(model, epoch: int, epochs: int) -> None:
    """What a trainer does: the benchmarks' own models have no epoch hook."""
    if hasattr(model, "start_epoch"):
        model.start_epoch(epoch, epochs)


# ---------------------------------------------------------------------------------------
# LibMTL parity: (total parameters, LibMTL get_share_params) from LibMTL's classes
# ---------------------------------------------------------------------------------------

#: NYUv2, LibMTL examples/nyu: resnet_dilated('resnet50') + DeepLabHead(2048, 13/1/3),
#: gates sized for 3×32×64 inputs; every head output [2, c, 4, 8] before upsampling
LIBMTL_NYUV2 = {
    "hps": (71888721, 23508032), "cross_stitch": (118904821, 70524132),
    "mtan": (92347921, 23508032), "mmoe": (95433623, 47016064),
    "cgc": (142449687, 23508032), "ple": (142990383, 23508032),
    "dselect_k": (142523427, 94032128), "ltb": (118904839, 70524150),
}
#: Office-31, LibMTL examples/office: resnet18 + pool + Linear/BN/ReLU/Dropout(512), 31
#: classes, 224×224, multi-input (LibMTL refuses cross_stitch, ple and ltb)
LIBMTL_OFFICE31 = {
    "hps": (11487901, 11440192), "mtan": (19448605, 11440192), "mmoe": (23831267, 22880384),
    "cgc": (46711651, 11440192), "dselect_k": (48517999, 45760768),
}
#: multi_digits: LibMTL's classes given mtlx's CNN encoder and Linear(64, 10) heads
LIBMTL_DIGITS = {
    "hps": (24596, 23296), "mmoe": (48680, 46592), "cgc": (71976, 23296),
    "dselect_k": (96848, 93184),
}


@pytest.mark.parametrize("arch", list(LIBMTL_NYUV2))
def test_nyuv2_resnet50_counts_and_shapes_equal_libmtl(arch):
    bench = envs.create("nyuv2", model="resnet50_aspp")
    spec = dataclasses.replace(bench.architecture_spec(width=1.0), input_shape=(3, 32, 64))
    with torch.device("meta"):
        model = A.build(arch, spec, **EXPERTS.get(arch, {}))
        reps, _ = model.representations(torch.zeros(2, 3, 32, 64), spec.tasks)
        heads = {t: tuple(model.heads[t](reps[t]).shape) for t in spec.tasks}
    assert (_count(model.parameters()), _count(model.shared_parameters())) == LIBMTL_NYUV2[arch]
    assert heads == {"segmentation": (2, 13, 4, 8), "depth": (2, 1, 4, 8), "normal": (2, 3, 4, 8)}


@pytest.mark.parametrize("arch", A.available())
def test_office31_counts_equal_libmtl_and_single_input_ones_are_refused(arch, office_root):
    bench = envs.create("office31", root=office_root, image_size=224)
    if arch not in LIBMTL_OFFICE31:
        with pytest.raises(ValueError, match="multi-input") as e:
            bench.build_model(arch=arch)
        assert "hps, mmoe, mtan, cgc, dselect_k" in str(e.value)
        return
    logging.disable(logging.WARNING)
    try:
        with torch.device("meta"):
            model = bench.build_model(arch=arch, **EXPERTS.get(arch, {}))
            out = model(torch.zeros(2, 3, 224, 224), "dslr")
    finally:
        logging.disable(logging.NOTSET)
    assert (_count(model.parameters()), _count(model.shared_parameters())) == LIBMTL_OFFICE31[arch]
    assert tuple(out.shape) == (2, 31)


#: independent arithmetic: encoder E = conv(1→16) 160 + conv(16→32) 4640 + Linear(288→64)
#: 18496 = 23296; head Linear(64→10) 650; K = 2 blocks; T = 2 tasks; PLE gates read the
#: inputs of the stem (196), block 1 (16·7·7 = 784) and block 2 (32·3·3 = 288)
E, HEAD, T, K = 23296, 650, 2, 2
DIGITS_ARITHMETIC = {
    "cross_stitch": (T * E + K * T * T + T * HEAD, T * E + K * T * T),
    "ltb": (T * E + (K + 2) * T * T + T * HEAD, T * E + (K + 2) * T * T),
    "ple": (E + T * (E + (197 + 785 + 289) * 2 + HEAD), E),
}


@pytest.mark.parametrize("arch", A.available())
def test_multi_digits_counts(arch, digits):
    if arch == "mtan":
        with pytest.raises(ValueError, match="not a ResNet.*accepts: hps, cross_stitch, mmoe"):
            digits.build_model(arch=arch)
        return
    model = digits.build_model(arch=arch, **EXPERTS.get(arch, {}))
    want = LIBMTL_DIGITS.get(arch) or DIGITS_ARITHMETIC[arch]
    assert (_count(model.parameters()), _count(model.shared_parameters())) == want
    rep, logits = model(torch.zeros(5, 1, 14, 14))
    assert {t: tuple(v.shape) for t, v in logits.items()} == {"left": (5, 10), "right": (5, 10)}
    assert (rep is not None) == (arch == "hps") == ("representation" in model.features)


def test_generic_hps_is_the_benchmarks_own_model(digits):
    own = digits.build_model()
    generic = A.build("hps", digits.architecture_spec())
    assert type(own).__name__ == "MultiDigitsNet" and isinstance(generic, A.HPS)
    assert [p.shape for p in own.parameters()] == [p.shape for p in generic.parameters()]
    torch.manual_seed(0)
    a = digits.build_model(arch="hps")
    torch.manual_seed(0)
    b = digits.build_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _libmtl():
    """LibMTL's architecture package from the checkout in MTLX_LIBMTL, without running
    LibMTL/__init__ (it imports the trainer and every weighting)."""
    pkg = types.ModuleType("LibMTL")
    pkg.__path__ = [os.path.join(os.environ["MTLX_LIBMTL"], "LibMTL")]
    sys.modules.setdefault("LibMTL", pkg)
    import LibMTL.architecture as L

    return L


LIBMTL_NAMES = {"hps": "HPS", "cross_stitch": "Cross_stitch", "mtan": "MTAN", "mmoe": "MMoE",
                "cgc": "CGC", "ple": "PLE", "dselect_k": "DSelect_k", "ltb": "LTB"}


def _libmtl_args(arch: str, T: int, img) -> dict:
    return {"mmoe": dict(img_size=img, num_experts=[2]),
            "cgc": dict(img_size=img, num_experts=[1] * (T + 1)),
            "ple": dict(img_size=img, num_experts=[1] * (T + 1)),
            "dselect_k": dict(img_size=img, num_experts=[4], num_nonzeros=2, kgamma=1.0),
            }.get(arch, {})


def _copy_libmtl_weights(arch: str, ref, ours, tasks) -> None:
    """Load LibMTL model ``ref``'s weights into ``ours``, module by module."""
    pairs = []
    if arch == "hps":
        pairs = [(ref.encoder, ours.encoder)]
    elif arch in ("mmoe", "cgc", "dselect_k"):
        pairs = [(ref.experts_shared, ours.experts)]
        if arch == "cgc":
            pairs += [(ref.experts_specific, ours.task_experts)]
        if arch == "dselect_k":
            pairs += [(ref._z_logits, ours.z_logits), (ref._w_logits, ours.w_logits)]
        else:
            pairs += [(ref.gate_specific, ours.gates)]
    elif arch in ("cross_stitch", "ltb"):
        enc = ref.encoder
        for t, task in enumerate(tasks):
            pairs += [(enc.resnet_conv[task], ours.columns[t][0])]
            pairs += [(enc.resnet_layer[str(i)][t], ours.columns[t][i + 1]) for i in range(4)]
        with torch.no_grad():
            (ours.cross if arch == "cross_stitch" else ours.alpha).copy_(
                enc.cross_unit if arch == "cross_stitch" else enc.alpha)
    elif arch == "ple":
        enc = ref.encoder
        for i in range(5):
            pairs += [(enc.shared_layer[str(i)][0], ours.experts[0][i])]
            pairs += [(enc.specific_layer[str(i)][task][0], ours.task_experts[task][0][i])
                      for task in tasks]
        pairs += [(enc.gate_specific, ours.gates)]
    elif arch == "mtan":
        enc = ref.encoder
        pairs = [(enc.shared_conv, ours.stem), (enc.shared_layer["0"][0], ours.layers[0][0])]
        pairs += [(enc.shared_layer[str(i)][j], ours.layers[i][j]) for i in range(4) for j in (0, 1)]
        pairs += [(enc.encoder_att[str(i)][t], ours.masks[task][i])
                  for i in range(4) for t, task in enumerate(tasks)]
        pairs += [(enc.encoder_block_att, ours.blocks)]
    for a, b in pairs:
        b.load_state_dict(a.state_dict())
    if arch == "dselect_k":
        # LibMTL casts '0'/'1' strings to bool, so all its codes are True (NumPy makes every
        # non-empty string True); compare with the codes it means
        # (docs/architectures.md §DSelect-k)
        assert bool(ref._binary_codes.all())
        ref._binary_codes = ours.codes.unsqueeze(0)


@pytest.mark.skipif(not os.environ.get("MTLX_LIBMTL"), reason="set MTLX_LIBMTL=<LibMTL checkout>")
@pytest.mark.parametrize("arch", A.available())
def test_same_representations_as_libmtl_on_resnet50(arch):
    """Optional: LibMTL's class and ours, same weights, same per-task representations."""
    L = _libmtl()
    from LibMTL.model import resnet_dilated

    bench = envs.create("nyuv2", model="resnet50_aspp")
    tasks = bench.tasks
    spec = dataclasses.replace(bench.architecture_spec(width=1.0), input_shape=(3, 32, 32))
    torch.manual_seed(0)
    identity = torch.nn.ModuleDict({t: torch.nn.Identity() for t in tasks})
    ref = getattr(L, LIBMTL_NAMES[arch])(
        list(tasks), lambda: resnet_dilated("resnet50", pretrained=False), identity, False,
        False, "cpu", **_libmtl_args(arch, len(tasks), (3, 32, 32)))
    ours = A.build(arch, spec, **EXPERTS.get(arch, {}))
    _copy_libmtl_weights(arch, ref, ours, tasks)
    assert _count(ref.parameters()) == _count(ours.parameters()) - _count(ours.heads.parameters())
    ref.eval(), ours.eval()
    ref.epoch, ref.epochs = 3, 10  # LTB past warm-up: the same Gumbel draw from the same seed
    ours.start_epoch(3, 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        want = ref(x)
        torch.manual_seed(1)
        got, _ = ours.representations(x, tasks)
    for t in tasks:
        torch.testing.assert_close(got[t], want[t], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not os.environ.get("MTLX_LIBMTL"), reason="set MTLX_LIBMTL=<LibMTL checkout>")
@pytest.mark.parametrize("arch", ["hps", "mmoe", "cgc", "dselect_k"])
def test_same_representations_as_libmtl_on_multi_digits(arch, digits):
    L = _libmtl()
    from envs.multi_digits import digits_encoder

    identity = torch.nn.ModuleDict({t: torch.nn.Identity() for t in digits.tasks})
    ref = getattr(L, LIBMTL_NAMES[arch])(list(digits.tasks), digits_encoder, identity, False,
                                         False, "cpu", **_libmtl_args(arch, 2, (1, 14, 14)))
    ours = A.build(arch, digits.architecture_spec(), **EXPERTS.get(arch, {}))
    assert _count(ref.get_share_params()) == _count(ours.shared_parameters())
    _copy_libmtl_weights(arch, ref, ours, digits.tasks)
    ref.eval(), ours.eval()
    x = torch.randn(3, 1, 14, 14)
    with torch.no_grad():
        want, (got, _) = ref(x), ours.representations(x, digits.tasks)
    for t in digits.tasks:
        torch.testing.assert_close(got[t], want[t])


# ---------------------------------------------------------------------------------------
# the shared / task split, by what each task's loss reaches
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [a for a in A.available() if a != "mtan"])
def test_split_matches_what_each_loss_reaches(arch, digits):
    torch.manual_seed(0)
    model = digits.build_model(arch=arch, **EXPERTS.get(arch, {}))
    _start_epoch(model, 5, 10)  # LTB past warm-up
    shared = {id(p) for p in model.shared_parameters()}
    own = {t: {id(p) for p in model.task_parameters(t)} for t in digits.tasks}
    every = {id(p) for p in model.parameters()}
    assert not shared & own["left"] and not own["left"] & own["right"]
    assert shared | {id(p) for p in model.all_task_parameters()} == every
    assert shared | own["left"] | own["right"] == every  # no parameter of several tasks
    batch = next(iter(digits.make_loader("train", 8)))
    loss = digits.forward_losses(model, batch).losses[0]  # task "left"
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    reached = {id(p) for p, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    assert not reached & own["right"]  # the right task's own parameters are not touched
    assert reached & own["left"] and reached & shared


def test_mtan_split_on_a_resnet(nyu_root):
    bench = envs.create("nyuv2", root=nyu_root, model="resnet50_aspp", width=TINY)
    model = A.build("mtan", bench.architecture_spec(layers=(2, 2, 2, 2)))
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in [*model.stem.parameters(), *model.layers.parameters()]}
    blocks = {id(p) for p in model.blocks.parameters()}
    for t in bench.tasks:
        own = {id(p) for p in model.task_parameters(t)}
        assert own == {id(p) for p in [*model.masks[t].parameters(), *model.heads[t].parameters()]}
        assert not own & blocks
    assert blocks <= {id(p) for p in model.all_task_parameters()}


# ---------------------------------------------------------------------------------------
# training through the engine
# ---------------------------------------------------------------------------------------


def _steps(bench, model, batch, method, level="param", steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.shared_parameters()]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        fwd = bench.forward_losses(model, batch)
        res = methods.backward(method, fwd.losses, model.shared_parameters(),
                               model.all_task_parameters(), rep=fwd.rep, level=level)
        assert torch.isfinite(res.weights).all()
        opt.step()
    moved = [not torch.equal(a, p) for a, p in zip(before, model.shared_parameters())]
    assert any(moved)
    return fwd


@pytest.mark.parametrize("arch", [a for a in A.available() if a != "mtan"])
def test_multi_digits_trains_param_level_and_rep_level_only_for_hps(arch, digits):
    torch.manual_seed(0)
    model = digits.build_model(arch=arch, **EXPERTS.get(arch, {}))
    _start_epoch(model, 0, 2)
    batch = next(iter(digits.make_loader("train", 16, shuffle=True)))
    fwd = _steps(digits, model, batch, methods.create("pcgrad", 2, seed=0))
    if arch == "hps":
        _steps(digits, model, batch, methods.create("imtl_g", 2), level="rep")
        return
    assert fwd.rep is None and "representation" not in model.features
    with pytest.raises(ValueError, match="needs the shared representation"):
        methods.backward(methods.create("imtl_g", 2), fwd.losses, model.shared_parameters(),
                         model.all_task_parameters(), rep=fwd.rep, level="rep")


@pytest.mark.parametrize("arch", ["mmoe", "mtan", "dselect_k"])
def test_office_multi_input_trains(arch, office_root, caplog):
    bench = envs.create("office31", root=office_root, image_size=16)
    torch.manual_seed(0)
    with caplog.at_level(logging.ERROR):
        model = bench.build_model(width=4, arch=arch, **EXPERTS.get(arch, {}))
    batch = next(iter(bench.make_loader("train", 4, shuffle=True)))
    fwd = _steps(bench, model, batch, methods.create("pcgrad", 3, seed=0))
    assert fwd.rep is None and set(fwd.outputs["logits"]) == set(bench.tasks)


@pytest.mark.parametrize("arch", A.available())
def test_nyuv2_resnet_trains(arch, nyu_root):
    bench = envs.create("nyuv2", root=nyu_root, model="resnet50_aspp", width=TINY)
    torch.manual_seed(0)
    spec = bench.architecture_spec(layers=(2, 2, 2, 2) if arch == "mtan" else (1, 1, 1, 1))
    model = A.build(arch, spec, **EXPERTS.get(arch, {}))
    _start_epoch(model, 0, 1)
    batch = next(iter(bench.make_loader("train", 2)))
    fwd = _steps(bench, model, batch, methods.create("pcgrad", 3, seed=0), steps=1)
    assert fwd.outputs["segmentation"].shape == (2, 13, 32, 32)
    assert torch.allclose(fwd.outputs["normal"].norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_celeba_architectures(tmp_path):
    ffx.write_celeba(tmp_path, seed=1)
    bench = envs.create("celeba", root=tmp_path, image_size=16)
    spec = bench.architecture_spec(width=2)
    assert A.accepted(spec) == [a for a in A.available() if a != "mtan"]
    torch.manual_seed(0)
    model = bench.build_model(width=2, arch="cross_stitch")
    batch = next(iter(bench.make_loader("train", 4)))
    fwd = _steps(bench, model, batch, methods.create("ew", 40), steps=1)
    assert fwd.outputs["logits"].shape == (4, 40) and fwd.rep is None


# ---------------------------------------------------------------------------------------
# the mixing rules, independently
# ---------------------------------------------------------------------------------------


def test_mmoe_is_the_gated_sum_of_its_experts(digits):
    torch.manual_seed(0)
    model = digits.build_model(arch="mmoe", num_experts=3).eval()
    x = torch.randn(4, 1, 14, 14)
    reps, _ = model.representations(x, digits.tasks)
    for t in digits.tasks:
        w = torch.softmax(model.gates[t][0](x.flatten(1)), dim=1)
        want = sum(w[:, e:e + 1] * model.experts[e](x) for e in range(3))
        torch.testing.assert_close(reps[t], want)


def test_cross_stitch_with_identity_units_is_independent_columns(digits):
    model = digits.build_model(arch="cross_stitch").eval()
    with torch.no_grad():
        model.cross.copy_(torch.eye(2).expand(2, 2, 2))
    x = torch.randn(3, 1, 14, 14)
    reps, _ = model.representations(x, digits.tasks)
    for i, t in enumerate(digits.tasks):
        col = model.columns[i]
        torch.testing.assert_close(reps[t], col[2](col[1](col[0](x))))


def test_dselect_k_weights_are_a_distribution_and_the_smooth_step_is_smooth(digits):
    from envs.architectures.mixture import smooth_step

    g = 2.0
    t = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    assert smooth_step(t, g).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    eps = torch.tensor([-1.0 + 1e-4, 1.0 - 1e-4])
    torch.testing.assert_close(smooth_step(eps, g), torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    model = digits.build_model(arch="dselect_k", num_experts=8, num_nonzeros=3)
    with torch.no_grad():
        for p in model.z_logits.parameters():
            p.normal_(0, 0.05)  # away from LibMTL's near-zero init, so weights are uneven
        w = model.expert_weights(torch.randn(6, 196), "left")
    assert w.shape == (6, 8) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    assert model.codes[5].tolist() == [True, False, True]  # 5 = 0b101, most significant first


def test_ltb_warm_up_then_one_hot_links(digits, caplog):
    model = digits.build_model(arch="ltb")
    with caplog.at_level(logging.WARNING, logger="envs.architectures.columns"):
        assert torch.equal(model.links(), torch.ones(4, 2, 2))
    assert "start_epoch" in caplog.text
    model.start_epoch(0, 200)  # 0 < 200 / 100: warm-up
    assert torch.equal(model.links(), torch.ones(4, 2, 2))
    model.start_epoch(3, 200)
    a = model.links()
    assert set(a.unique().tolist()) <= {0.0, 1.0} and torch.equal(a.sum(-1), torch.ones(4, 2))
    with pytest.raises(ValueError, match="epoch < epochs"):
        model.start_epoch(5, 5)


# ---------------------------------------------------------------------------------------
# options and refusals
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        ({"arch": "resnet"}, "unknown architecture 'resnet'; choose one of: hps, cross_stitch"),
        ({"arch": "mmoe", "kgamma": 2.0}, r"unknown option\(s\) \['kgamma'\] .*valid: num_experts"),
        ({"num_experts": 2}, r"unknown option\(s\) \['num_experts'\] for architecture 'hps'"),
        ({"arch": "dselect_k", "num_experts": 3}, "power of two"),
        ({"arch": "cgc", "num_experts": [1, 2]}, r"list \[shared, one per task\] of 3"),
        ({"arch": "mmoe", "num_experts": 0}, "integer >= 1"),
        ({"arch": "mmoe", "depth": 3}, r"unknown model option\(s\) \[.depth.\].*arch=<hps\|"),
    ],
)
def test_bad_options_are_named(options, match, digits):
    with pytest.raises(ValueError, match=match):
        digits.build_model(**options)


def test_office_and_celeba_name_unknown_model_options(office_root, tmp_path):
    office = envs.create("office31", root=office_root, image_size=16)
    with pytest.raises(ValueError, match=r"\['depth'\] for office31; valid: width, pretrained_path"):
        office.build_model(depth=3)
    ffx.write_celeba(tmp_path, seed=1)
    celeba = envs.create("celeba", root=tmp_path, image_size=16)
    with pytest.raises(ValueError, match=r"valid: width, arch \(one of hps"):
        celeba.build_model(arch="mmoe", experts=2)


@pytest.mark.parametrize("arch", [a for a in A.available() if a != "mtan"])
def test_models_pickle_and_reload(arch, digits):
    torch.manual_seed(0)
    model = digits.build_model(arch=arch).eval()
    clone = pickle.loads(pickle.dumps(model))
    torch.manual_seed(1)
    fresh = digits.build_model(arch=arch).eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 14, 14)
    with torch.no_grad():
        want = model(x)[1]
        for other in (clone, fresh):
            got = other(x)[1]
            assert all(torch.equal(got[t], want[t]) for t in digits.tasks)


def test_gates_refuse_another_input_size(digits):
    model = digits.build_model(arch="cgc")
    with pytest.raises(ValueError, match="196 values per sample"):
        model(torch.zeros(2, 1, 16, 16))


def test_segnet_mtan_takes_no_arch():
    bench = envs.create("nyuv2")
    with pytest.raises(ValueError, match="model='resnet50_aspp'"):
        bench.build_model(arch="mmoe")


def test_describe_lists_every_architecture_with_counts(digits):
    rows = {r["arch"]: r for r in A.describe(digits)}
    assert list(rows) == A.available()
    assert not rows["mtan"]["accepted"] and "ResNet" in rows["mtan"]["reason"]
    assert rows["cgc"]["parameters"] == LIBMTL_DIGITS["cgc"][0]
    assert rows["ple"]["shared"] == DIGITS_ARITHMETIC["ple"][1]
    assert rows["hps"]["representation"] == "shared" and rows["ltb"]["representation"] == "per task"
    assert rows["mmoe"]["task_specific"] == rows["mmoe"]["parameters"] - rows["mmoe"]["shared"]
    table = A.format_table(list(rows.values()))
    assert "71,976" in table and "not applicable" in table
    two = {r["arch"]: r for r in A.describe(digits, arch_options={"mmoe": {"num_experts": 2}})}
    assert two["mmoe"]["parameters"] == LIBMTL_DIGITS["mmoe"][0]
    assert two["mmoe"]["options"] == {"num_experts": 2}
    with pytest.raises(ValueError, match="unknown architecture"):
        A.describe(digits, arch_options={"moe": {}})


def test_fit_calls_the_epoch_hook(digits):
    from envs.multi_digits import fit

    model = fit(digits, methods.create("ew", 2), epochs=1, model_options={"arch": "ltb"})
    assert (model.epoch, model.epochs) == (0, 1)


def test_describe_on_other_benchmarks():
    city = envs.create("cityscapes", model="resnet50_aspp")
    rows = {r["arch"]: r for r in A.describe(city, width=TINY)}
    assert all(r["accepted"] for r in rows.values())
    assert rows["hps"]["parameters"] == _count(city.build_model(width=TINY).parameters())
    segnet = A.describe(envs.create("cityscapes"))
    assert not any(r["accepted"] for r in segnet) and "resnet50_aspp" in segnet[0]["reason"]
    toy = A.describe(envs.create("toy"))
    assert not any(r["accepted"] for r in toy) and "as parts" in toy[0]["reason"]
