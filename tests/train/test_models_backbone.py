"""The backbone registry: every entry builds and runs, declares true strides and channels, keeps
its upstream key layout (torchvision, IBN-Net, torchreid) and loads upstream weights; old
checkpoint configs map to registered names; ``tal-train --backbone``."""
from __future__ import annotations

import hashlib

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tal_infer.errors import TalError
from tal_train.checkpoint import load_checkpoint, save_checkpoint
from tal_train.cli import main as train_cli
from tal_train.models import (DomainNorm, PretrainedWeights, TALConfig, backbone_names,
                              backbone_spec, build_backbone, build_model, load_pretrained)
from tal_train.models.pretrained import source_key
from test_models_support import randomize_norms, tiny_config

# Parameter counts torchvision publishes for its ImageNet ResNets (classifier included).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}
RESNETS = [f"resnet{d}{ibn}{w}" for w in ("", "_x0_25") for d in (18, 34, 50, 101)
           for ibn in ("", "_ibn_a", "_ibn_b")]
OSNETS = ["osnet_x1_0", "osnet_x0_25", "osnet_ain_x1_0", "osnet_ain_x0_25"]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- the registry -------------------------------------------------------------------------

def test_registered_names_and_unknown_name():
    assert backbone_names() == RESNETS + OSNETS
    with pytest.raises(TalError) as err:
        backbone_spec("resnet152")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unknown backbone 'resnet152'")
    assert all(name in message for name in backbone_names())


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_builds_and_runs_with_its_registered_strides_and_channels(name):
    spec = backbone_spec(name)
    x = torch.randn(1, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    # each last stride on the small widths (the code path does not depend on the width)
    for last_stride in spec.last_strides if spec.weights is None else spec.last_strides[:1]:
        net = build_backbone(name, last_stride=last_stride).eval()
        with torch.no_grad():
            out = net(x)
        strides = spec.strides(last_stride)
        assert list(out) == ["res4", "res5"]
        for scale, m in out.items():
            assert m.shape == (1, spec.scales[scale].channels, 64 // strides[scale],
                               32 // strides[scale]), (scale, last_stride)
            assert torch.isfinite(m).all() and m.abs().sum() > 0
    short = build_backbone(name, last_scale="res4")  # nothing past the res4 stage is built
    assert set(short(x)) == {"res4"}
    assert spec.scales["res5"].stage not in dict(short.named_children())


def test_every_batch_norm_comes_from_the_norm_layer():
    for name in ("resnet50_ibn_a_x0_25", "resnet18_ibn_b_x0_25", "osnet_x0_25", "osnet_ain_x0_25"):
        plain = build_backbone(name)
        injected = build_backbone(name, norm_layer=lambda c: DomainNorm(c, 2, di_norm="bn"))
        batch_norms = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
        domain_norms = [m for m in injected.modules() if isinstance(m, DomainNorm)]
        assert len(domain_norms) == len(batch_norms) > 0, name
        # and no BatchNorm outside them: 2 experts + the DI BN each
        assert sum(isinstance(m, nn.BatchNorm2d) for m in injected.modules()) == 3 * len(batch_norms)


# ---- ResNet / IBN-Net layouts -------------------------------------------------------------

@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_resnet_has_torchvision_parameter_count(depth):
    with torch.device("meta"):
        net = build_backbone(f"resnet{depth}")
    fc = net.spec.scales["res5"].channels * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) + fc == TORCHVISION_PARAMS[depth]


def test_resnet50_keys_follow_torchvision():
    with torch.device("meta"):
        s = shapes(build_backbone("resnet50"))
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
        s = shapes(build_backbone("resnet50_ibn_a"))
    assert s["bn1.running_mean"] == (64,)
    assert s["layer1.0.bn1.IN.weight"] == (32,) and "layer1.0.bn1.IN.running_mean" not in s
    assert s["layer1.0.bn1.BN.running_var"] == (32,)
    assert s["layer3.5.bn1.IN.bias"] == (128,) and s["layer3.5.bn1.BN.weight"] == (128,)
    assert s["layer4.0.bn1.weight"] == (512,) and "layer4.0.bn1.IN.weight" not in s
    assert "layer1.0.bn2.IN.weight" not in s


def test_ibn_b_keys_follow_official_layout():
    with torch.device("meta"):
        s50, s18 = shapes(build_backbone("resnet50_ibn_b")), shapes(build_backbone("resnet18_ibn_b"))
    assert s50["bn1.weight"] == (64,) and "bn1.running_mean" not in s50  # stem instance norm
    assert s50["layer1.2.IN.weight"] == (256,) and s50["layer2.3.IN.bias"] == (512,)
    assert not {"layer1.0.IN.weight", "layer1.1.IN.weight", "layer3.5.IN.weight"} & set(s50)
    assert s18["layer1.1.IN.weight"] == (64,) and s18["layer2.1.IN.weight"] == (128,)
    assert "layer1.0.IN.weight" not in s18


def test_quarter_width_resnet_is_the_tiny_presets_network():
    with torch.device("meta"):
        s = shapes(build_backbone("resnet18_ibn_b_x0_25"))
    assert s["conv1.weight"] == (16, 3, 7, 7) and s["layer4.1.conv2.weight"] == (128, 128, 3, 3)
    assert TALConfig.preset("tiny", domains=("a",)).backbone == "resnet18_ibn_b_x0_25"


def test_published_weights_are_declared_on_the_entries():
    for name in RESNETS:
        weights = backbone_spec(name).weights
        if name.endswith("_x0_25"):
            assert weights is None  # no published weights at a quarter width
            continue
        # torch.hub naming: <name>-<first 8 hex digits of the file's SHA-256>.pth
        assert weights.url.startswith("https://") and weights.url.endswith("/" + weights.file_name)
        assert weights.file_name == f"{name}-{weights.sha256}.pth" and len(weights.sha256) == 8
    for name in OSNETS:
        weights = backbone_spec(name).weights
        assert weights.url.startswith("https://drive.google.com/")
        assert weights.file_name == f"{name}_imagenet.pth" and weights.sha256 is None


# ---- OSNet / OSNet-AIN: torchreid layout ---------------------------------------------------

def torchreid_osnet_keys(widths: tuple[int, int, int, int], ain: bool) -> dict[str, tuple]:
    """Key -> shape of torchreid's ImageNet OSNet / OSNet-AIN state dicts (osnet.py /
    osnet_ain.py: 1000 classes, a 512-d ``fc`` embedding), written out key by key."""
    keys: dict[str, tuple] = {}

    def conv(prefix, cin, cout, k=1, groups=1, bias=False):
        keys[f"{prefix}.weight"] = (cout, cin // groups, k, k)
        if bias:
            keys[f"{prefix}.bias"] = (cout,)

    def bn(prefix, c):
        keys.update({f"{prefix}.{leaf}": (c,) for leaf in ("weight", "bias", "running_mean",
                                                           "running_var")})
        keys[f"{prefix}.num_batches_tracked"] = ()

    def instance_norm(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)})

    def conv_bn(prefix, cin, cout, k=1):  # ConvLayer, Conv1x1, Conv1x1Linear
        conv(f"{prefix}.conv", cin, cout, k)
        bn(f"{prefix}.bn", cout)

    def light_conv(prefix, c):  # LightConv3x3
        conv(f"{prefix}.conv1", c, c)
        conv(f"{prefix}.conv2", c, c, 3, groups=c)
        bn(f"{prefix}.bn", c)

    def block(prefix, cin, cout, with_in):  # OSBlock / OSBlockINin
        mid = cout // 4
        conv_bn(f"{prefix}.conv1", cin, mid)
        for t in range(1, 5):
            for i in range(t):
                if ain:
                    light_conv(f"{prefix}.conv2.{t - 1}.layers.{i}", mid)
                else:
                    light_conv(f"{prefix}.conv2{'abcd'[t - 1]}" + (f".{i}" if t > 1 else ""), mid)
        conv(f"{prefix}.gate.fc1", mid, mid // 16, bias=True)
        conv(f"{prefix}.gate.fc2", mid // 16, mid, bias=True)
        if with_in:
            conv(f"{prefix}.conv3.conv", mid, cout)
            instance_norm(f"{prefix}.IN", cout)
        else:
            conv_bn(f"{prefix}.conv3", mid, cout)
        if cin != cout:
            conv_bn(f"{prefix}.downsample", cin, cout)

    c0, c1, c2, c3 = widths
    if ain:
        conv("conv1.conv", 3, c0, 7)
        instance_norm("conv1.bn", c0)
    else:
        conv_bn("conv1", 3, c0, 7)
    in_blocks = ((True, True), (False, True), (True, False))  # osnet_ain_x1_0's blocks
    for stage, (cin, cout) in enumerate(((c0, c1), (c1, c2), (c2, c3))):
        for j in range(2):
            block(f"conv{stage + 2}.{j}", cin if j == 0 else cout, cout,
                  ain and in_blocks[stage][j])
        if stage < 2:
            conv_bn(f"pool{stage + 2}.0" if ain else f"conv{stage + 2}.2.0", cout, cout)
    conv_bn("conv5", c3, c3)
    keys.update({"fc.0.weight": (512, c3), "fc.0.bias": (512,), "classifier.weight": (1000, 512),
                 "classifier.bias": (1000,)})
    bn("fc.1", 512)
    return keys


OSNET_WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_25": (16, 64, 96, 128)}
HEADS = ("fc.", "classifier.")


@pytest.mark.parametrize("name", OSNETS)
def test_osnet_keys_follow_torchreid_layout(name):
    width = "_".join(name.split("_")[-2:])  # x1_0, x0_25
    upstream = torchreid_osnet_keys(OSNET_WIDTHS[width], "_ain" in name)
    with torch.device("meta"):
        ours = shapes(build_backbone(name))
    assert ours == {k: v for k, v in upstream.items() if not k.startswith(HEADS)}


@pytest.mark.parametrize("name, published", [("osnet_x1_0", 2_193_616), ("osnet_x0_25", 203_568),
                                             ("osnet_ain_x1_0", 2_193_616),
                                             ("osnet_ain_x0_25", 203_568)])
def test_osnet_parameter_count_matches_torchreids_listing(name, published):
    """torchreid's model-complexity listing counts the 512-d fc embedding and counts a layer once
    per call, so each block's aggregation gate (shared by its 4 streams) four times."""
    with torch.device("meta"):
        net = build_backbone(name)
    own = sum(p.numel() for p in net.parameters())
    gates = sum(p.numel() for n, p in net.named_parameters() if ".gate." in n)
    c = net.spec.scales["res5"].channels
    embedding = c * 512 + 512 + 2 * 512
    assert own + 3 * gates + embedding == published


def upstream_file(tmp_path, keys: dict[str, tuple], wrap: bool = False):
    """A weights file with the given keys and random values -> (path, state dict)."""
    g = torch.Generator().manual_seed(7)
    state = {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                 else torch.rand(s, generator=g) + 0.5) for k, s in keys.items()}
    payload = {"state_dict": {"module." + k: v for k, v in state.items()}} if wrap else state
    path = tmp_path / "upstream.pth"
    torch.save(payload, path)
    return path, state


@pytest.mark.parametrize("name, di_norm, wrap", [("osnet_x0_25", "dabn", False),
                                                 ("osnet_ain_x0_25", "bn", True)])
def test_torchreid_weights_fill_every_expert(tmp_path, name, di_norm, wrap):
    path, source = upstream_file(tmp_path, torchreid_osnet_keys(OSNET_WIDTHS["x0_25"],
                                                                "_ain" in name), wrap)
    model = build_model(TALConfig.preset("tiny", domains=("a", "b", "c"), backbone=name,
                                         di_norm=di_norm))
    report = load_pretrained(model, path)
    target = model.backbone.state_dict()
    assert report.unexpected == ()  # the embedding and the classifier are dropped
    assert all(".di.attention." in k for k in report.missing)
    assert (len(report.missing) > 0) == (di_norm == "dabn")
    assert set(report.loaded) == set(target) - set(report.missing)
    for key in report.loaded:
        torch.testing.assert_close(target[key], source[source_key(key)], rtol=0, atol=0)


# ---- load_pretrained ----------------------------------------------------------------------

def imagenet_file(tmp_path, name, wrap=False):
    """A randomly filled plain network `name`, saved as a weights file (with the ImageNet
    classifier) -> (path, plain network)."""
    torch.manual_seed(5)
    plain = randomize_norms(build_backbone(name))
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


@pytest.mark.parametrize("name, di_norm, wrap", [("resnet18_x0_25", "dabn", False),
                                                 ("resnet18_ibn_b_x0_25", "bn", False),
                                                 ("resnet18_ibn_a_x0_25", "dabn", True)])
def test_imagenet_weights_fill_every_expert(tmp_path, name, di_norm, wrap):
    path, plain = imagenet_file(tmp_path, name, wrap)
    model = build_model(tiny_config(backbone=name, di_norm=di_norm, domains=("a", "b", "c")))
    report = load_pretrained(model, str(path))
    copies = expected_copies(plain, 3, di_norm == "bn")
    target, source = model.backbone.state_dict(), plain.state_dict()
    assert set(report.loaded) == set(copies)
    for key, src in copies.items():
        torch.testing.assert_close(target[key], source[src], rtol=0, atol=0)
    assert report.unexpected == ()  # the classifier is dropped silently
    assert all(".di.attention." in k for k in report.missing)
    assert (len(report.missing) > 0) == (di_norm == "dabn")


def test_load_into_bare_backbone_and_shape_mismatch(tmp_path):
    path, plain = imagenet_file(tmp_path, "resnet18_ibn_b_x0_25")
    net = build_backbone("resnet18_ibn_b_x0_25")
    load_pretrained(net, path)
    torch.testing.assert_close(net.layer2[1].IN.weight,
                               plain.layer2[1].IN.weight, rtol=0, atol=0)
    with pytest.raises(TalError, match=r"imagenet.pth: conv1.weight has shape \[16, 3, 7, 7\]"):
        load_pretrained(build_model(tiny_config(backbone="resnet18_ibn_b")), path)


def test_unreadable_sources_fail_clearly(tmp_path):
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


def test_url_source_goes_through_the_hub_cache(tmp_path):
    path, plain = imagenet_file(tmp_path, "resnet18_ibn_b_x0_25")
    model = build_model(tiny_config())
    report = load_pretrained(model, path.as_uri(), cache_dir=str(tmp_path / "hub"))
    assert (tmp_path / "hub" / "imagenet.pth").is_file() and report.loaded
    norm = model.backbone.layer3[0].bn1
    assert isinstance(norm, DomainNorm)
    torch.testing.assert_close(norm.experts[1].running_mean, plain.layer3[0].bn1.running_mean,
                               rtol=0, atol=0)


def test_published_weights_are_checked_against_their_sha256(tmp_path):
    path, _ = imagenet_file(tmp_path, "resnet18_ibn_b_x0_25")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    hub = tmp_path / "hub"
    model = build_model(tiny_config())
    good = PretrainedWeights(path.as_uri(), "tiny-weights.pth", digest[:8])
    assert load_pretrained(model, good, cache_dir=str(hub)).loaded  # downloaded and checked
    # the cached copy is checked again on use: a damaged file is named, not loaded
    (hub / "tiny-weights.pth").write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(TalError, match=r"tiny-weights.pth: cached weights do not match the "
                                       rf"SHA-256 prefix {digest[:8]}"):
        load_pretrained(model, good, cache_dir=str(hub))
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    with pytest.raises(TalError, match=f"does not match its SHA-256 prefix {wrong}"):
        load_pretrained(model, PretrainedWeights(path.as_uri(), "other.pth", wrong),
                        cache_dir=str(hub))
    assert not (hub / "other.pth").exists()


def test_paper_preset_backbone_is_ibn_b_50_with_domain_norms():
    with torch.device("meta"):
        model = build_model(TALConfig.preset("paper", domains=("x", "y", "z")))
    keys = set(model.backbone.state_dict())
    assert "layer2.3.IN.weight" in keys and "layer4.2.bn3.experts.2.running_var" in keys
    assert "necks.res4.bn.di.attention.0.weight" in model.state_dict()


# ---- model configs ------------------------------------------------------------------------

def test_osnet_configs_use_stride_16_and_multiples_of_16():
    config = TALConfig.preset("paper", domains=("a",), backbone="osnet_ain_x1_0")
    assert config.last_stride == 1 and config.scale_sizes() == {"res4": (24, 8), "res5": (24, 8)}
    with pytest.raises(TalError, match=r"last_stride=2: backbone osnet_x0_25 takes \[1\]"):
        TALConfig.preset("tiny", domains=("a",), backbone="osnet_x0_25", last_stride=2)
    with pytest.raises(TalError, match="osnet_x0_25 needs sides that are multiples of 16"):
        TALConfig.preset("tiny", domains=("a",), backbone="osnet_x0_25", image_size=(72, 40))
    with pytest.raises(TalError, match="unknown backbone 'osnet'"):
        TALConfig.preset("tiny", domains=("a",), backbone="osnet")


@pytest.mark.parametrize("name", ["osnet_x0_25", "osnet_ain_x0_25"])
def test_osnet_scale_sizes_match_the_network(name):
    model = build_model(tiny_config(backbone=name, image_size=(96, 48))).eval()
    feats = model.extract(torch.randn(1, 3, 96, 48))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == model.feature_shapes()


LEGACY_TINY = {"depth": 18, "ibn": "b", "base_width": 16}  # the tiny preset before the registry


def _legacy_dict(config: TALConfig, **legacy) -> dict:
    old = {k: v for k, v in config.to_dict().items() if k != "backbone"}
    return {**old, **legacy}


def test_checkpoint_with_a_pre_registry_config_still_loads(tmp_path):
    torch.manual_seed(3)
    model = build_model(tiny_config())
    path = save_checkpoint(tmp_path / "old.pth", model_state=model.state_dict(), epoch=1,
                           config=_legacy_dict(model.config, **LEGACY_TINY), run_name="old")
    config = TALConfig.from_dict(load_checkpoint(path)["config"])
    assert config == model.config and config.backbone == "resnet18_ibn_b_x0_25"
    restored = build_model(config)
    restored.load_state_dict(load_checkpoint(path)["model"])
    x = torch.randn(2, 3, 64, 32)
    for name, value in model.eval().extract(x).items():
        torch.testing.assert_close(restored.eval().extract(x)[name], value, rtol=0, atol=0)
    paper = _legacy_dict(TALConfig.preset("paper", domains=("a",)), depth=50, ibn="b",
                         base_width=64)
    assert TALConfig.from_dict(paper).backbone == "resnet50_ibn_b"


@pytest.mark.parametrize("legacy, message", [
    (dict(depth=18, ibn="b", base_width=8), "base_width=8 has no registered backbone"),
    (dict(depth=18, ibn=None, base_width=16, backbone="resnet18_x0_25"), "both backbone")])
def test_pre_registry_configs_that_map_to_nothing_fail_clearly(legacy, message):
    data = {**_legacy_dict(tiny_config()), **legacy}
    with pytest.raises(TalError, match=message) as err:
        TALConfig.from_dict(data)
    assert "\n" not in str(err.value)


# ---- tal-train --backbone -----------------------------------------------------------------

def test_tal_train_help_lists_the_backbones():
    result = CliRunner().invoke(train_cli, ["--help"], terminal_width=400)
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "--backbone NAME" in help_text
    assert all(name in help_text for name in backbone_names())


def test_tal_train_unknown_backbone_is_one_error_line(tmp_path):
    result = CliRunner().invoke(train_cli, ["--backbone", "resnet-50", "--preset", "tiny",
                                            "--data-root", str(tmp_path), "--target", "x"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown backbone 'resnet-50'; "
                                                   "registered: resnet18, ")
