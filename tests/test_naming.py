"""No class or function of monai_unetzoo may share its name with a MONAI component.

MONAI's config resolver (``monai.bundle.ComponentLocator``) collects the classes and functions of every loaded
module whose name starts with ``monai`` -- ours included. A short ``"_target_": "DiceCELoss"`` in anybody's config
becomes ambiguous once a second ``DiceCELoss`` is loaded, so our names must be unique.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

import monai
from monai.bundle import ComponentLocator

import monai_unetzoo


def import_all(package) -> list[str]:
    """Import every submodule of ``package`` that imports in this environment; return the module names."""
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(info.name)
            names.append(info.name)
        except Exception:  # optional dependencies of MONAI that are not installed; nothing of ours
            if info.name.startswith("monai_unetzoo"):
                raise
    return names


def defined_names(module_names: list[str]) -> dict[str, set[str]]:
    """name -> modules defining a class or function of that name (as ComponentLocator sees them)."""
    import sys

    found: dict[str, set[str]] = {}
    for modname in module_names:
        module = sys.modules[modname]
        for name, obj in inspect.getmembers(module):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == modname:
                found.setdefault(name, set()).add(modname)
    return found


def test_no_component_name_shared_with_monai():
    ours = import_all(monai_unetzoo)
    theirs = import_all(monai)
    assert len(ours) > 3 and len(theirs) > 100
    our_names = defined_names(ours)
    monai_names = defined_names(theirs)
    assert "UNet" in monai_names and "DiceCELoss" in monai_names  # the reference really holds MONAI's names
    clashes = {n: sorted(monai_names[n]) for n in our_names if n in monai_names}
    assert not clashes, f"names already used by MONAI (rename ours): {clashes}"


def test_component_locator_resolves_our_short_names_uniquely():
    import_all(monai_unetzoo)
    locator = ComponentLocator()
    for name in ("ClassicUNet", "UNetPlusPlus", "ResUNet"):
        assert locator.get_component_module_name(name) == "monai_unetzoo.networks." + {
            "ClassicUNet": "unet", "UNetPlusPlus": "unetpp", "ResUNet": "resunet"}[name]
    # And MONAI's own short names stay unique with our package loaded.
    assert locator.get_component_module_name("DiceCELoss") == "monai.losses.dice"
    assert locator.get_component_module_name("UNet") == "monai.networks.nets.unet"
