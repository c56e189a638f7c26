"""TALModel: config, feature maps of every stream and scale, inference matching (Table 3-6
switches), the docs/bundle.md projection form, and gradient routing of the three phases."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tal_infer.errors import TalError
from tal_plugins import qaconv_match_reference_numpy
from tal_train.models import TALConfig, TALModel, build_model
from test_models_support import TOL, randomize_norms, tiny_config

H, W = 64, 32


def make_model(**overrides) -> TALModel:
    torch.manual_seed(0)
    model = randomize_norms(build_model(tiny_config(**overrides)))
    with torch.no_grad():  # distinct, non-trivial head weights
        for name, p in model.named_parameters():
            if name.endswith("fc.weight") or name.endswith("fc.bias"):
                p.normal_()
    return model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(seed))


# ---- config -------------------------------------------------------------------------------

def test_presets_and_plain_dict_round_trip():
    paper = TALConfig.preset("paper", domains=("cuhk03", "msmt17", "randperson"))
    assert (paper.backbone, paper.image_size, paper.neck_channels) == ("resnet50_ibn_b", (384, 128), 128)
    assert paper.scale_sizes() == {"res4": (24, 8), "res5": (12, 4)} and paper.num_domains == 3
    tiny = TALConfig.preset("tiny", domains=("a", "b"))
    assert (tiny.backbone, tiny.image_size) == ("resnet18_ibn_b_x0_25", (128, 64))
    buf = io.BytesIO()
    torch.save({"config": tiny.to_dict()}, buf)
    buf.seek(0)
    restored = TALConfig.from_dict(torch.load(buf, weights_only=True)["config"])
    assert restored == tiny and isinstance(tiny.to_dict()["scales"], list)


@pytest.mark.parametrize("overrides, message", [
    (dict(domains=()), "domains"), (dict(backbone="resnet20"), "resnet20"), (dict(scales=("res3",)), "scales"),
    (dict(streams=()), "streams"), (dict(di_norm="in"), "di_norm"), (dict(colour=1), "colour"),
    (dict(domains=("a", "a")), "duplicate")])
def test_invalid_config_raises_one_clear_line(overrides, message):
    with pytest.raises(TalError, match=message) as err:
        TALConfig.preset("tiny", **{"domains": ("a", "b"), **overrides})
    assert "\n" not in str(err.value)
    with pytest.raises(TalError, match="unknown model preset 'huge'"):
        TALConfig.preset("huge")


@pytest.mark.parametrize("size, last_stride", [((64, 32), 2), ((100, 52), 1), ((72, 40), 2)])
def test_scale_sizes_match_the_network(size, last_stride):
    model = build_model(tiny_config(image_size=size, last_stride=last_stride)).eval()
    feats = model.extract(torch.randn(1, 3, *size))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == model.feature_shapes()


# ---- feature maps -------------------------------------------------------------------------

def test_feature_maps_of_every_stream_and_scale():
    model = make_model().train()
    x = images(3)
    for stream in (0, 1, "di"):
        maps = model.feature_maps(x, stream)
        assert list(maps) == ["res4", "res5"]
        for scale, m in maps.items():
            assert m.shape == (3, 64, *model.config.scale_sizes()[scale]) and m.dtype == torch.float32
            torch.testing.assert_close(m.norm(dim=1), torch.ones(3, *m.shape[2:]), **TOL)
            assert m.requires_grad


def test_ds_feature_maps_frozen_is_eval_experts_without_updates():
    model = make_model().train()
    x = images(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.ds_feature_maps(x, frozen=True)
    assert all(m.training for m in model.modules())  # modes restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    for scale, m in frozen.items():
        assert m.shape == (3, 2, 64, *model.config.scale_sizes()[scale]) and not m.requires_grad
        for i in range(2):
            torch.testing.assert_close(m[:, i], model.feature_maps(x, i)[scale], **TOL)


def test_ds_feature_maps_unfrozen_equals_separate_training_passes():
    model = make_model().train()
    x = images(4)
    tiled = model.ds_feature_maps(x, frozen=False)
    twin = make_model().train()  # same seed: same weights, fresh statistics
    for i in range(2):
        for scale, m in twin.feature_maps(x, i).items():
            torch.testing.assert_close(tiled[scale][:, i], m, **TOL)
    assert tiled["res4"].requires_grad


@pytest.mark.parametrize("streams", [("ds", "di"), ("ds",), ("di",)])
def test_extract_names_and_values(streams):
    model = make_model(streams=streams).train()
    x = images(2)
    feats = model.extract(x)
    expected = [f"{s}_{l}" for s in streams for l in ("res4", "res5")]
    assert list(feats) == expected and model.training
    model.eval()
    for name, f in feats.items():
        stream, scale = name.split("_")
        if stream == "di":
            torch.testing.assert_close(f, model.feature_maps(x, "di")[scale], **TOL)
        else:
            assert f.shape[1] == 2
            torch.testing.assert_close(f[:, 1], model.feature_maps(x, 1)[scale], **TOL)


def test_single_scale_models():
    for scale in ("res4", "res5"):
        model = make_model(scales=(scale,)).eval()
        feats = model.extract(images(2))
        assert list(feats) == [f"ds_{scale}", f"di_{scale}"]
        assert model.match(feats, feats).shape == (2, 2)
    assert not hasattr(make_model(scales=("res4",)).backbone, "layer4")


# ---- matching -----------------------------------------------------------------------------

def scale_maps(feats: dict, part: str, scales=("res4", "res5")) -> list[torch.Tensor]:
    return [feats[f"{part}_{s}"] for s in scales]


@pytest.mark.parametrize("ds_head", ["msda", "avg", "vote"])
def test_match_parts_equal_the_heads_on_full_vectors(ds_head):
    model = make_model(ds_head=ds_head).eval()
    q, g = model.extract(images(3, seed=2)), model.extract(images(5, seed=3))
    both, ds, di = (model.match(q, g, parts) for parts in (None, ("ds",), ("di",)))
    assert both.shape == (3, 5)
    torch.testing.assert_close(both, ds + di, **TOL)
    torch.testing.assert_close(di, model.di_head(scale_maps(q, "di"), scale_maps(g, "di")), **TOL)
    if ds_head == "vote":
        assert model.msda_head is None
        expected = sum(model.ds_head([m[:, i] for m in scale_maps(q, "ds")],
                                     [m[:, i] for m in scale_maps(g, "ds")]) for i in range(2)) / 2
    else:
        assert (model.msda_head.attention is None) == (ds_head == "avg")
        expected = model.msda_head(scale_maps(q, "ds"), scale_maps(g, "ds"))
    torch.testing.assert_close(ds, expected, **TOL)
    with pytest.raises(ValueError, match="not streams"):
        make_model(streams=("di",)).match(q, g, ("ds",))


def numpy_bundle_scores(form: dict, q: dict, g: dict, parts) -> np.ndarray:
    """docs/bundle.md "Matching in projection form", written out on the heads.npz arrays."""
    arrays, matching = form["arrays"], form["matching"]

    def layout(x):  # [N, (K,) C, h, w] -> [N, (K,) HW, C]
        x = x.numpy()
        return np.swapaxes(x.reshape(*x.shape[:-2], -1), -1, -2)

    total = 0.0
    for s in parts:
        mode, z = matching["streams"][s]["mode"], 0.0
        for l in matching["scales"]:
            qs, gs = layout(q[f"{s}_{l}"]), layout(g[f"{s}_{l}"])
            wq, wg = arrays[f"{s}/{l}/wq"], arrays[f"{s}/{l}/wg"]
            if mode == "ms":
                z = z + qaconv_match_reference_numpy(qs, gs, wq, wg)[..., 0]
                continue
            r = np.stack([qaconv_match_reference_numpy(qs[:, i], gs[:, i], wq[i], wg[i])
                          for i in range(wq.shape[0])], axis=-1)
            if mode == "mean":
                z = z + r[:, :, 0].mean(-1)
            else:
                hidden = np.maximum(r[:, :, 1:].sum(-1) + arrays[f"{s}/{l}/b1"], 0)
                logits = hidden @ arrays[f"{s}/{l}/w2"].T + arrays[f"{s}/{l}/b2"]
                alpha = np.exp(logits - logits.max(-1, keepdims=True))
                alpha /= alpha.sum(-1, keepdims=True)
                z = z + (alpha * r[:, :, 0]).sum(-1)
        a, b = arrays[f"{s}/affine"]
        total = total + a * z + b
    return total


@pytest.mark.parametrize("ds_head, mode", [("msda", "attention"), ("avg", "mean"), ("vote", "mean")])
def test_projection_form_follows_bundle_contract(ds_head, mode):
    model = make_model(ds_head=ds_head).eval()
    q, g = model.extract(images(3, seed=4)), model.extract(images(4, seed=5))
    form = model.projection_form()
    assert form["matching"] == {"score": ["ds", "di"], "scales": ["res4", "res5"],
                                "streams": {"ds": {"mode": mode}, "di": {"mode": "ms"}}}
    arrays = form["arrays"]
    assert all(v.dtype == np.float32 for v in arrays.values())
    assert arrays["di/res4/wq"].shape == (8, 1) and arrays["ds/res5/wg"].shape[:2] == (2, 2)
    assert arrays["ds/affine"].shape == (2,) and (("ds/res4/b1" in arrays) == (mode == "attention"))
    np.testing.assert_allclose(numpy_bundle_scores(form, q, g, ("ds", "di")),
                               model.match(q, g).numpy(), rtol=1e-4, atol=1e-4)


# ---- training phases and gradient routing -------------------------------------------------

def expert_state(model: TALModel, i: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if f".experts.{i}." in k}


def backward_of(model: TALModel, phase: str, domain: int | None = None) -> None:
    model.zero_grad(set_to_none=True)
    scores = model(images(4), phase, domain)
    assert scores.shape == (4, 4)
    # A random weighting: the plain sum of batch-normalized scores has no gradient.
    (scores * torch.randn(4, 4, generator=torch.Generator().manual_seed(9))).sum().backward()


def has_grad(params) -> bool:
    return all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0


def no_grad(params) -> bool:
    return all(p.grad is None for p in params)


def test_phase1_updates_shared_convs_one_expert_and_ds_head():
    model = make_model().train()
    other_before, own_before = expert_state(model, 0), expert_state(model, 1)
    backward_of(model, "per_domain", domain=1)
    groups = model.parameter_groups()
    named = dict(model.named_parameters())
    assert has_grad(groups["shared"]) and has_grad(groups["ds_head"])
    assert has_grad([p for n, p in named.items() if ".experts.1." in n])
    assert no_grad([p for n, p in named.items() if ".experts.0." in n])
    assert no_grad(groups["di_norm"] + groups["msda_head"] + groups["di_head"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other_before.items())
    assert not torch.equal(own_before["backbone.layer1.0.bn1.experts.1.running_mean"],
                           model.backbone.layer1[0].bn1.experts[1].running_mean)


def test_phase2_updates_only_the_msda_head():
    model = make_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("msda_head")}
    backward_of(model, "hybrid_ds")
    groups = model.parameter_groups()
    assert has_grad(groups["msda_head"])
    assert no_grad([p for name, ps in groups.items() if name != "msda_head" for p in ps])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("di_norm", ["dabn", "bn"])
def test_phase3_updates_shared_convs_di_norm_and_di_head_never_dsbn(di_norm):
    model = make_model(di_norm=di_norm).train()
    experts_before = {**expert_state(model, 0), **expert_state(model, 1)}
    backward_of(model, "hybrid_di")
    groups = model.parameter_groups()
    assert has_grad(groups["shared"]) and has_grad(groups["di_norm"]) and has_grad(groups["di_head"])
    assert no_grad(groups["expert_norms"] + groups["ds_head"] + groups["msda_head"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in experts_before.items())


def test_parameter_groups_partition_the_model_and_phases_follow_config():
    model = make_model()
    groups = model.parameter_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert model.training_phases() == ("per_domain", "hybrid_ds", "hybrid_di")
    assert make_model(ds_head="vote").training_phases() == ("per_domain", "hybrid_di")
    assert make_model(streams=("ds",)).training_phases() == ("per_domain", "hybrid_ds")
    assert make_model(streams=("di",), di_norm="bn").training_phases() == ("hybrid_di",)
    with pytest.raises(ValueError, match="no DI stream"):
        make_model(streams=("ds",)).hybrid_di_scores(images(2))
    with pytest.raises(ValueError, match="phase must be one of"):
        model(images(2), "warmup")


def test_checkpoint_style_rebuild_gives_the_same_features():
    model = make_model().eval()
    buf = io.BytesIO()
    torch.save({"config": model.config.to_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    rebuilt = build_model(TALConfig.from_dict(ckpt["config"]))
    rebuilt.load_state_dict(ckpt["model"])  # strict
    x = images(2)
    for name, f in rebuilt.eval().extract(x).items():
        torch.testing.assert_close(f, model.extract(x)[name], rtol=0, atol=0)
