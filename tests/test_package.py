"""The package's top-level names resolve to the implementations (lazily)."""
import importlib

import pytest

import easyedit_split


@pytest.mark.parametrize("name", sorted(easyedit_split._EXPORTS))
def test_public_names_resolve(name):
    module = importlib.import_module(easyedit_split._EXPORTS[name])
    assert getattr(easyedit_split, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        easyedit_split.nope  # noqa: B018
