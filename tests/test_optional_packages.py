"""Configs that need a package beyond mmdet's requirements: loaded when it is installed, a clear error naming the
extra when it is not, before anything is built."""

from __future__ import annotations

import pytest

from mmdet_lightning import MMDetModule
from mmdet_lightning import optional_packages as optional
from mmdet_lightning.config import load_config
from mmdet_lightning.model_zoo import family_config

ZOO_FAMILIES = ["boxinst", "paa", "lad", "albu_example"]


@pytest.mark.parametrize("family", ZOO_FAMILIES)
def test_zoo_family_configs_load_with_the_extra_installed(family: str) -> None:
    missing = [package.pip for _, package in optional.missing_packages(load_config(family_config(family)))]
    assert missing == []  # scripts/setup.sh installs the `zoo` extra


@pytest.mark.parametrize("family", ["convnext", "timm_example"])
def test_mmpretrain_families_name_mmpretrain_and_its_torchvision(family: str) -> None:
    if optional.BY_IMPORT["mmpretrain"].installed():
        pytest.skip("mmpretrain is installed here")  # in no extra: scripts/setup.sh does not install it
    with pytest.raises(ModuleNotFoundError) as err:
        load_config(family_config(family))
    assert "custom_imports (mmpretrain.models) needs mmpretrain (import mmpretrain): pip install mmpretrain " \
        "(mmpretrain.models imports torchvision: install the torchvision built for your torch" in str(err.value)


def _not_installed(monkeypatch: pytest.MonkeyPatch, table: dict[str, optional.OptionalPackage], key: str) -> None:
    """As if the package of ``table[key]`` were not installed: its import name is one no environment has."""
    package = table[key]
    monkeypatch.setitem(table, key, optional.OptionalPackage(f"{package.module}_not_installed_here", package.pip,
                                                             package.extra))


def test_a_missing_package_names_the_extra_and_where_the_config_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _not_installed(monkeypatch, optional.BY_TYPE, "PAAHead")
    with pytest.raises(ModuleNotFoundError) as err:
        MMDetModule(family_config("paa"))
    message = str(err.value)
    assert "`PAAHead` (model.bbox_head) needs scikit-learn" in message
    assert 'pip install "mmdet-lightning[zoo]" (or pip install scikit-learn)' in message


def test_a_missing_custom_import_is_named_before_mmengine_tries_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _not_installed(monkeypatch, optional.BY_IMPORT, "mmpretrain")
    with pytest.raises(ModuleNotFoundError, match=r"custom_imports \(mmpretrain.models\) needs mmpretrain"):
        load_config(family_config("timm_example"))


def test_instaboost_names_its_own_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _not_installed(monkeypatch, optional.BY_TYPE, "InstaBoost")
    with pytest.raises(ModuleNotFoundError, match=r'`InstaBoost` \(train_dataloader.dataset.pipeline\[1\]\) needs '
                                                  r'instaboostfast .*mmdet-lightning\[instaboost\]'):
        load_config(family_config("instaboost"))


def test_a_dict_config_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _not_installed(monkeypatch, optional.BY_TYPE, "Albu")
    cfg = {"model": {"type": "RetinaNet"}, "train_pipeline": [{"type": "LoadImageFromFile"}, {"type": "Albu"}]}
    with pytest.raises(ModuleNotFoundError, match=r"`Albu` \(train_pipeline\[1\]\) needs albumentations"):
        load_config(cfg)
