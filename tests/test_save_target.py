"""Saving never deletes the user's files: a folder holding anything but an earlier checkpoint of ours is refused
before anything is written (API, CLI prune, recipes, `.` included); modes follow the umask; export does not
overwrite unless asked."""

import json
import os
import stat

import pytest

from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.cli.main import main
from hf_mpprune.core.constants import FILES_NAME, LEDGER_NAME, MASKS_NAME
from hf_mpprune.hub.target import entries
from hf_mpprune.recipes.schema import recipe_from_dict


def _user_folder(path):
    (path / "src").mkdir(parents=True)
    (path / "src" / "train.py").write_text("print('train')\n")
    (path / "data.csv").write_text("a,b\n1,2\n")
    (path / "logs").mkdir()  # an empty folder is the user's too
    return {p: (path / p).read_text() for p in ("src/train.py", "data.csv")}


def _unchanged(path, files):
    assert entries(str(path)) == ["data.csv", "logs/", "src/train.py"], entries(str(path))
    assert all((path / p).read_text() == t for p, t in files.items())


def _pruned(model):
    pruner = MPPruner(model, PruningConfig("magnitude", 0.5))
    pruner.prune()
    return pruner


def _no_leftovers(parent):
    assert not [n for n in os.listdir(parent) if "mpprune-" in n], os.listdir(parent)


def test_api_save_into_a_folder_of_user_files_is_refused(tiny_vit, tmp_path):
    target = tmp_path / "proj"
    files = _user_folder(target)
    with pytest.raises(ConfigError, match=r"refusing to save into .*proj.*3 entries.*data\.csv.*Nothing was written"):
        _pruned(tiny_vit).save_pretrained(target)
    _unchanged(target, files)
    _no_leftovers(tmp_path)


def test_api_save_into_the_current_folder_is_refused(tiny_vit, tmp_path, monkeypatch):
    files = _user_folder(tmp_path / "proj")
    monkeypatch.chdir(tmp_path / "proj")
    with pytest.raises(ConfigError, match="current working directory"):
        _pruned(tiny_vit).save_pretrained(".")
    _unchanged(tmp_path / "proj", files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="current working directory"):  # a parent of the cwd: same
        _pruned(tiny_vit).save_pretrained(tmp_path)


def test_cli_prune_into_user_folders_keeps_every_file(tiny_bert, tmp_path, monkeypatch, capsys):
    src = tmp_path / "src-model"
    tiny_bert.save_pretrained(src)
    target = tmp_path / "proj"
    files = _user_folder(target)
    argv = ["prune", str(src), "--method", "wanda", "--sparsity", "0.5", "--calibration", "random", "--samples", "4"]
    assert main([*argv, "--output", str(target)]) == 2
    assert "refusing to save into" in capsys.readouterr().err
    _unchanged(target, files)
    monkeypatch.chdir(target)
    assert main([*argv, "--output", "."]) == 2
    assert "current working directory" in capsys.readouterr().err
    _unchanged(target, files)


def test_recipe_run_refuses_before_any_work(tiny_vit, tmp_path, monkeypatch):
    from hf_mpprune.recipes import runner

    src, target = tmp_path / "m", tmp_path / "proj"
    tiny_vit.save_pretrained(src)
    files = _user_folder(target)

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(runner.MPPruner, "from_pretrained", no_load)
    recipe = recipe_from_dict({"model": {"id": str(src)}, "pruning": {"method": "magnitude", "sparsity": 0.5}})
    with pytest.raises(ConfigError, match="refusing to save into"):
        runner.execute(recipe, output_dir=str(target))
    _unchanged(target, files)


def test_an_earlier_checkpoint_is_replaced_but_not_one_holding_user_files(tiny_vit, tmp_path):
    target = tmp_path / "ck"
    pruner = _pruned(tiny_vit)
    pruner.save_pretrained(target)
    listed = json.loads((target / FILES_NAME).read_text())
    assert listed == [e for e in entries(str(target)) if e != FILES_NAME] and MASKS_NAME in listed
    (target / "spectra_plots").mkdir()  # written by a recipe after its save: still ours
    (target / "spectra_plots" / "overview.png").write_bytes(b"png")
    pruner.save_pretrained(target)  # replaces our own checkpoint
    assert not (target / "spectra_plots").exists()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"1 entry .*notes\.txt"):
        pruner.save_pretrained(target)
    assert (target / "notes.txt").read_text() == "mine" and (target / LEDGER_NAME).is_file()
    _no_leftovers(tmp_path)


def test_a_checkpoint_saved_before_file_lists_is_recognised(tiny_vit, tmp_path):
    target = tmp_path / "ck"
    pruner = _pruned(tiny_vit)
    pruner.save_pretrained(target)
    (target / FILES_NAME).unlink()
    pruner.save_pretrained(target)
    (target / FILES_NAME).unlink()
    (target / "train.py").write_text("x")
    with pytest.raises(ConfigError, match=r"train\.py"):
        pruner.save_pretrained(target)


def test_empty_folder_and_modes_follow_the_umask(tiny_vit, tmp_path):
    pruner = _pruned(tiny_vit)
    old = os.umask(0o022)
    try:
        new = pruner.save_pretrained(tmp_path / "new")
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o755
        modes = {n: stat.S_IMODE(os.stat(os.path.join(new, n)).st_mode) for n in os.listdir(new)}
        assert set(modes.values()) == {0o644}, modes  # weights and masks included (mkstemp made them 0600)
        (tmp_path / "kept").mkdir(mode=0o750)
        os.chmod(tmp_path / "kept", 0o750)
        kept = pruner.save_pretrained(tmp_path / "kept")
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o750  # the folder keeps the mode the user gave it
        os.umask(0o077)
        private = pruner.save_pretrained(tmp_path / "private")
        assert stat.S_IMODE(os.stat(os.path.join(private, "model.safetensors")).st_mode) == 0o600
    finally:
        os.umask(old)


def test_export_does_not_overwrite_unless_asked(tiny_vit, tmp_path, capsys):
    from hf_mpprune import export

    out = tmp_path / "vit.pt2"
    out.write_text("an earlier export the user keeps")
    with pytest.raises(ConfigError, match="already exists.*overwrite=True"):
        export(tiny_vit, out, format="pt2")
    assert out.read_text() == "an earlier export the user keeps"
    ckpt = tmp_path / "ck"
    tiny_vit.save_pretrained(ckpt)
    assert main(["export", str(ckpt), "--format", "pt2", "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "an earlier export the user keeps"
    assert main(["export", str(ckpt), "--format", "pt2", "--output", str(out), "--overwrite"]) == 0
    assert out.stat().st_size > 1000
