"""ResNet / IBN-Net layouts (torchvision and XingangPan/IBN-Net) and ImageNet weight loading."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from tal_infer.errors import TalError
from tal_train.models import (PRETRAINED_URLS, DomainNorm, TALConfig, build_model, load_pretrained,
                              pretrained_url, resnet)
from test_models_support import randomize_norms, tiny_config

# Parameter counts torchvision publishes for its ImageNet ResNets (classifier included).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_resnet_has_torchvision_parameter_count(depth):
    with torch.device("meta"):
        net = resnet(depth)
    fc = net.channels["res5"] * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) + fc == TORCHVISION_PARAMS[depth]


def test_resnet50_keys_follow_torchvision():
    with torch.device("meta"):
        s = shapes(resnet(50))
    assert s["conv1.weight"] == (64, 3, 7, 7)
    assert s["bn1.running_var"] == (64,)
    assert s["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert s["layer1.0.downsample.1.running_mean"] == (256,)
    assert s["layer2.0.conv2.weight"] == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert s["layer4.2.bn3.num_batches_tracked"] == ()
    assert s["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert not any(k.startswith("fc.") or ".IN." in k or k.endswith(".IN.weight") for k in s)


def test_ibn_a_keys_follow_official_layout():
    with torch.device("meta"):
        s = shapes(resnet(50, ibn="a"))
    assert s["bn1.running_mean"] == (64,)
    assert s["layer1.0.bn1.IN.weight"] == (32,) and "layer1.0.bn1.IN.running_mean" not in s
    assert s["layer1.0.bn1.BN.running_var"] == (32,)
    assert s["layer3.5.bn1.IN.bias"] == (128,) and s["layer3.5.bn1.BN.weight"] == (128,)
    assert s["layer4.0.bn1.weight"] == (512,) and "layer4.0.bn1.IN.weight" not in s
    assert "layer1.0.bn2.IN.weight" not in s


def test_ibn_b_keys_follow_official_layout():
    with torch.device("meta"):
        s50, s18 = shapes(resnet(50, ibn="b")), shapes(resnet(18, ibn="b"))
    assert s50["bn1.weight"] == (64,) and "bn1.running_mean" not in s50  # stem instance norm
    assert s50["layer1.2.IN.weight"] == (256,) and s50["layer2.3.IN.bias"] == (512,)
    assert not {"layer1.0.IN.weight", "layer1.1.IN.weight", "layer3.5.IN.weight"} & set(s50)
    assert s18["layer1.1.IN.weight"] == (64,) and s18["layer2.1.IN.weight"] == (128,)
    assert "layer1.0.IN.weight" not in s18


@pytest.mark.parametrize("last_stride, res5", [(2, (2, 1)), (1, (4, 2))],
                         ids=["last_stride2", "last_stride1"])
def test_forward_features_shapes(last_stride, res5):
    net = resnet(18, ibn="b", base_width=8, last_stride=last_stride).eval()
    out = net.forward_features(torch.randn(2, 3, 64, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 8, 16, 8), "res3": (2, 16, 8, 4), "res4": (2, 32, 4, 2), "res5": (2, 64, *res5)}
    short = resnet(18, base_width=8, last_scale="res4")
    assert not hasattr(short, "layer4") and set(short(torch.randn(1, 3, 64, 32))) == {
        "res2", "res3", "res4"}


def test_every_config_has_an_official_weights_url():
    for depth in (18, 34, 50, 101):
        for ibn in (None, "a", "b"):
            assert pretrained_url(depth, ibn).startswith("https://")
    assert len(PRETRAINED_URLS) == 12
    with pytest.raises(TalError, match="ResNet-152"):
        pretrained_url(152, None)


# ---- load_pretrained --------------------------------------------------------------------

def imagenet_file(tmp_path, ibn, wrap=False):
    """A randomly filled plain network of the tiny preset's architecture, saved as a weights file
    (with the ImageNet classifier) -> (path, plain network)."""
    torch.manual_seed(5)
    plain = randomize_norms(resnet(18, ibn=ibn, base_width=16))
    state = {**plain.state_dict(), "fc.weight": torch.randn(10, 128), "fc.bias": torch.randn(10)}
    if wrap:
        state = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)
    return path, plain


def expected_copies(plain: nn.Module, k: int, di_bn: bool) -> dict[str, str]:
    """Backbone key -> plain key: each BatchNorm of the plain network feeds every expert."""
    out = {}
    for key in plain.state_dict():
        module_name, _, leaf = key.rpartition(".")
        targets = [key]
        if isinstance(plain.get_submodule(module_name), nn.BatchNorm2d):
            targets = [f"{module_name}.experts.{i}.{leaf}" for i in range(k)]
            targets += [f"{module_name}.di.{leaf}"] if di_bn else []
        out.update({t: key for t in targets})
    return out


@pytest.mark.parametrize("ibn, di_norm, wrap", [(None, "dabn", False), ("b", "bn", False),
                                                ("a", "dabn", True)])
def test_imagenet_weights_fill_every_expert(tmp_path, ibn, di_norm, wrap):
    path, plain = imagenet_file(tmp_path, ibn, wrap)
    model = build_model(tiny_config(ibn=ibn, di_norm=di_norm, domains=("a", "b", "c")))
    report = load_pretrained(model, str(path))
    copies = expected_copies(plain, 3, di_norm == "bn")
    target, source = model.backbone.state_dict(), plain.state_dict()
    assert set(report.loaded) == set(copies)
    for key, src in copies.items():
        torch.testing.assert_close(target[key], source[src], rtol=0, atol=0)
    assert report.unexpected == ()  # the classifier is dropped silently
    assert all(".di.attention." in k for k in report.missing)
    assert (len(report.missing) > 0) == (di_norm == "dabn")


def test_load_into_bare_resnet_and_shape_mismatch(tmp_path):
    path, plain = imagenet_file(tmp_path, "b")
    net = resnet(18, ibn="b", base_width=16)
    load_pretrained(net, path)
    torch.testing.assert_close(net.layer2[1].IN.weight,
                               plain.layer2[1].IN.weight, rtol=0, atol=0)
    with pytest.raises(TalError, match=r"imagenet.pth: conv1.weight has shape \[16, 3, 7, 7\]"):
        load_pretrained(build_model(tiny_config(base_width=8)), path, allow_random=True)


def test_unreadable_sources_fail_clearly_or_fall_back_to_random(tmp_path, caplog):
    model = build_model(tiny_config())
    with pytest.raises(TalError, match="not found"):
        load_pretrained(model, tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(TalError, match="junk.pth: not a readable weights file"):
        load_pretrained(model, junk)
    url = "http://127.0.0.1:9/resnet18-f37072fd.pth"  # nothing listens on the discard port
    with pytest.raises(TalError, match="cannot download pretrained weights"):
        load_pretrained(model, url, cache_dir=str(tmp_path / "hub"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="tal_train.models.pretrained"):
        assert load_pretrained(model, url, allow_random=True, cache_dir=str(tmp_path / "hub")) is None
    assert "continuing from random initialization" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_url_source_goes_through_the_hub_cache(tmp_path):
    path, plain = imagenet_file(tmp_path, "b")
    model = build_model(tiny_config())
    report = load_pretrained(model, path.as_uri(), cache_dir=str(tmp_path / "hub"))
    assert (tmp_path / "hub" / "imagenet.pth").is_file() and report.loaded
    norm = model.backbone.layer3[0].bn1
    assert isinstance(norm, DomainNorm)
    torch.testing.assert_close(norm.experts[1].running_mean, plain.layer3[0].bn1.running_mean,
                               rtol=0, atol=0)


def test_paper_preset_backbone_is_ibn_b_50_with_domain_norms():
    with torch.device("meta"):
        model = build_model(TALConfig.preset("paper", domains=("x", "y", "z")))
    keys = set(model.backbone.state_dict())
    assert "layer2.3.IN.weight" in keys and "layer4.2.bn3.experts.2.running_var" in keys
    assert "necks.res4.bn.di.attention.0.weight" in model.state_dict()
