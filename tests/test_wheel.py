"""The built wheel stands alone: package data (recipes, card template, evaluate modules) ships, and the demo runs
from an installed wheel with no repository checkout on the path."""

import os
import shutil
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    dist, target, src = base / "dist", base / "site", base / "src"
    # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "mpprune-demo", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, src, ignore=skip, symlinks=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
    (wheel,) = dist.glob("hf_mpprune-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    return target, env, base


def _py(code: str, env, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_wheel_ships_its_data(installed):
    target, env, base = installed
    code = (
        "import os, hf_mpprune\n"
        "from hf_mpprune.recipes.schema import list_recipes, load_recipe\n"
        "from hf_mpprune.hub.card import template_text\n"
        "from hf_mpprune.metrics import TOPK_ACCURACY, EMBEDDING_AGREEMENT\n"
        "print(hf_mpprune.__file__)\n"
        "print(len(list_recipes()), load_recipe('digits_vit_magnitude_s050').model.id)\n"
        "print(len(template_text()) > 100, os.path.isdir(TOPK_ACCURACY), os.path.isdir(EMBEDDING_AGREEMENT))\n"
    )
    lines = _py(code, env, base).strip().splitlines()
    assert lines[0].startswith(str(target)), f"imported {lines[0]}, not the installed wheel"
    n, model_id = lines[1].split()
    assert int(n) == len(_shipped_recipes())
    assert model_id.startswith("builtin:")
    assert lines[2] == "True True True"


def _shipped_recipes() -> list[str]:
    return sorted(f for f in os.listdir(os.path.join(ROOT, "recipes")) if f.endswith(".yaml"))


def test_recipes_live_at_the_top_of_the_repository_and_travel_in_the_wheel(installed):
    """`recipes/` is the home of the shipped YAML files; the package sees them through its `library` link, and the
    wheel holds them as plain files (no link), each found by name from the installed package."""
    target, env, base = installed
    link = os.path.join(ROOT, "hf_mpprune", "recipes", "library")
    assert os.path.islink(link) and os.path.realpath(link) == os.path.join(ROOT, "recipes")
    names = [f[: -len(".yaml")] for f in _shipped_recipes()]
    assert len(names) >= 10
    shipped = os.path.join(str(target), "hf_mpprune", "recipes", "library")
    assert not os.path.islink(shipped) and sorted(os.listdir(shipped)) == _shipped_recipes()
    code = "from hf_mpprune.recipes.schema import recipe_path\n" + "".join(
        f"print(recipe_path({n!r}))\n" for n in names
    )
    paths = _py(code, env, base).split()
    assert [os.path.dirname(p) for p in paths] == [shipped] * len(names)


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel(installed):
    target, env, base = installed
    out = subprocess.run(
        [sys.executable, "-m", "hf_mpprune.demo", "--out", str(base / "demo"), "--epochs", "2",
         "--recipes", "digits_vit_magnitude_s050"],
        env=env, cwd=base, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "digits_vit_magnitude_s050" in out.stdout and "| ok" in out.stdout.replace("|  ok", "| ok")
    assert (base / "demo" / "digits_vit_magnitude_s050" / "mpprune_masks.safetensors").is_file()
