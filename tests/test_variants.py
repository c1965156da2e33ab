import pytest

from stx.errors import StxError
from stx.variants import STUDY_VARIANTS, VARIANTS, resolve_variant, variant_choices


def test_five_variants_and_their_modules():
    assert list(STUDY_VARIANTS) == ["baseline", "lora", "lora-mhc", "lora-velocity", "lora-mhc-velocity"]
    assert set(VARIANTS) == {*STUDY_VARIANTS, "scratch"} and resolve_variant("scratch").scratch
    assert not resolve_variant("baseline").train
    v = resolve_variant("lora-mhc-velocity")
    assert v.lora and v.mhc and v.velocity


@pytest.mark.parametrize(("alias", "name"), [("velocity", "lora-velocity"), ("mhc", "lora-mhc"),
                                             ("mhc-velocity", "lora-mhc-velocity")])
def test_aliases(alias, name):
    assert resolve_variant(alias).name == name
    assert alias in variant_choices()


def test_unknown_variant_lists_choices():
    with pytest.raises(StxError, match="unknown variant 'lora-mch': choose one of baseline, lora"):
        resolve_variant("lora-mch")
