"""Layer registry: names, roles and matrix views across architectures; patterns and their errors."""

import pytest
import torch

from hf_mpprune import ConfigError, NoPrunableLayersError, discover_layers
from hf_mpprune.core.errors import MPPruneWarning
from hf_mpprune.core.layers import classify_role
from tests import tiny_models


def roles(ls):
    return {layer.name: layer.role for layer in ls}


EVERYTHING = ["Linear", "Conv2d", "Conv1D", "role:head", "role:embed"]  # head and embeddings targeted explicitly


def test_vit_transformers5_names_and_roles(tiny_vit):
    ls = discover_layers(tiny_vit, targets=EVERYTHING)
    r = roles(ls)
    assert len(ls) == 2 * 6 + 2  # 6 Linears per block + patch conv + classifier
    assert r["vit.embeddings.patch_embeddings.projection"] == "embed"
    assert r["classifier"] == "head"
    for i in range(2):
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert r[f"vit.layers.{i}.attention.{n}"] == "attn"
        assert r[f"vit.layers.{i}.mlp.fc1"] == r[f"vit.layers.{i}.mlp.fc2"] == "mlp"
    conv = ls["vit.embeddings.patch_embeddings.projection"]
    assert conv.kind == "conv2d" and conv.shape == (64, 3 * 4 * 4)
    # the conv matrix view is channel-major then kernel row then column (docs/algorithms.md §1.2)
    w = conv.weight
    assert conv.matrix_view()[5, 1 * 16 + 2 * 4 + 3] == w[5, 1, 2, 3]
    assert conv.from_matrix(conv.matrix_view()).shape == w.shape


def test_vit_base_config_has_74_layers():
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(num_labels=1000))
    ls = discover_layers(model, targets=EVERYTHING)
    assert len(ls) == 12 * 6 + 2
    assert ls.by_role()["head"] == ["classifier"]
    assert len(ls.by_role()["attn"]) == 48 and len(ls.by_role()["mlp"]) == 24
    assert len(ls.fused_qkv_groups()) == 12


def test_bert_family_roles(tiny_bert):
    r = roles(discover_layers(tiny_bert))
    assert r["encoder.layer.0.attention.self.query"] == "attn"
    assert r["encoder.layer.0.attention.output.dense"] == "attn"
    assert r["encoder.layer.0.intermediate.dense"] == "mlp"
    assert r["encoder.layer.0.output.dense"] == "mlp"
    assert r["pooler.dense"] == "other"
    assert not any(n.startswith("embeddings") for n in r)


def test_minilm_real_weights(minilm_path):
    from transformers import AutoModel

    ls = discover_layers(AutoModel.from_pretrained(minilm_path))
    assert len(ls) == 6 * 6 + 1
    assert sum(la.role == "mlp" for la in ls) == 12 and sum(la.role == "attn" for la in ls) == 24


def test_resnet_convnext_gpt2():
    r = roles(discover_layers(tiny_models.tiny_resnet(), targets=EVERYTHING))
    assert r["resnet.embedder.embedder.convolution"] == "embed"
    assert r["classifier.1"] == "head"
    assert r["resnet.encoder.stages.1.layers.0.shortcut.convolution"] == "other"
    c = roles(discover_layers(tiny_models.tiny_convnext(), targets=EVERYTHING))
    assert c["convnext.encoder.stages.0.layers.0.dwconv"] == "other"
    assert c["convnext.encoder.stages.0.layers.0.pwconv1"] == "mlp"
    assert c["convnext.embeddings.patch_embeddings"] == "embed" and c["classifier"] == "head"
    g = discover_layers(tiny_models.tiny_gpt2())
    assert "lm_head" in g.excluded and "tied" in g.excluded["lm_head"]
    attn = g["transformer.h.0.attn.c_attn"]
    assert attn.kind == "conv1d" and attn.role == "attn"
    assert attn.shape == (192, 64)  # Conv1D stores (in, out); the view is (out, in)
    assert g["transformer.h.0.mlp.c_proj"].role == "mlp"


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("blocks.3.attn.qkv", "attn"),
        ("blocks.3.attn.proj", "attn"),
        ("blocks.3.mlp.fc1", "mlp"),
        ("patch_embed.proj", "embed"),
        ("head", "head"),
        ("head.fc", "head"),
        ("fc", "head"),
        ("layer1.0.conv1", "other"),
        ("stages.1.downsample.reduction", "other"),
        ("vit.encoder.layer.3.output.dense", "mlp"),
    ],
)
def test_timm_and_legacy_names(name, role):
    assert classify_role(name) == role


def test_targets_and_ignore(tiny_vit):
    ls = discover_layers(tiny_vit, targets=["Linear"], ignore=["re:classifier$"])
    assert "classifier" not in ls and "vit.embeddings.patch_embeddings.projection" not in ls
    assert ls.excluded["classifier"].startswith("ignored")
    assert len(discover_layers(tiny_vit, targets=["role:mlp"])) == 4
    assert discover_layers(tiny_vit, targets=["classifier"]).names == ["classifier"]
    assert "14 prunable layers" in discover_layers(tiny_vit, targets=EVERYTHING).explain()


def test_head_and_embeddings_are_left_dense_unless_targeted(tiny_vit):
    default = discover_layers(tiny_vit)
    assert len(default) == 12 and default.by_role()["head"] == default.by_role()["embed"] == []
    assert default.excluded["classifier"].startswith("task head: not pruned unless targeted explicitly")
    assert default.excluded["vit.embeddings.patch_embeddings.projection"].startswith("input embedding")
    assert "task head" in default.explain()
    # a bare type name is not explicit; a name, a regex or a role is
    assert "classifier" not in discover_layers(tiny_vit, targets=["Linear"])
    assert "classifier" in discover_layers(tiny_vit, targets=["Linear", "re:classifier$"])
    assert discover_layers(tiny_vit, targets=["role:embed"]).names == ["vit.embeddings.patch_embeddings.projection"]
    with pytest.raises(NoPrunableLayersError, match="only task-head / embedding layers matched"):
        discover_layers(torch.nn.ModuleDict({"classifier": torch.nn.Linear(2, 2)}))


def test_pattern_errors(tiny_vit):
    with pytest.raises(ConfigError, match="not a module type"):
        discover_layers(tiny_vit, targets=["Lineaar"])
    with pytest.raises(ConfigError, match="invalid regex"):
        discover_layers(tiny_vit, targets=["re:("])
    with pytest.raises(ConfigError, match="unknown role"):
        discover_layers(tiny_vit, targets=["role:ffn"])
    with pytest.raises(NoPrunableLayersError, match="no prunable layer"):
        discover_layers(tiny_vit, targets=["re:does_not_exist"])
    with pytest.raises(NoPrunableLayersError, match="all 14 candidate layers"):
        discover_layers(tiny_vit, ignore=["re:."])
    with pytest.raises(NoPrunableLayersError):
        discover_layers(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.warns(MPPruneWarning, match="matched no layer"):
        discover_layers(tiny_vit, ignore=["re:nothing_here"])
