"""options.py: every nlss_* value parsed from a string, one ValueError naming option, value and
expectation; which options a coarse kind uses; settings taken from a checkpoint (issue 18)."""

from types import SimpleNamespace

import pytest

from nlss_fenicsx import options
from nlss_fenicsx.options import (
    TwoGridOptions,
    merge_checkpoint,
    parse_options,
    unused_options,
)

SETTINGS = SimpleNamespace(K=8, r_max=6, sweeps=7, omega=0.66, pde="diffusion", n=81)


def test_defaults_are_the_papers():
    o = parse_options({})
    assert (o.coarse, o.r, o.K, o.sweeps, o.nu, o.omega, o.smoother, o.seed) == \
        ("svd", 48, 72, 10, 5, "auto", "jacobi", 0)
    assert o.given == frozenset() and o.from_model == frozenset()


def test_strings_are_parsed_and_given_is_recorded():
    o = parse_options({"nlss_coarse": "NLSS", "nlss_rank": " 16 ", "nlss_K": "24",
                       "nlss_omega": "0.5", "nlss_smoother": "sor", "nlss_model": "m.pt"})
    assert (o.coarse, o.r, o.K, o.omega, o.smoother, o.model) == \
        ("nlss", 16, 24, 0.5, "sor", "m.pt")
    assert o.given == {"nlss_coarse", "nlss_rank", "nlss_K", "nlss_omega", "nlss_smoother",
                       "nlss_model"}
    assert parse_options({"nlss_omega": "AUTO"}).omega == "auto"


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("nlss_rank", "48.0", "nlss_rank: expected an integer in [1, 2147483647], got '48.0'"),
    ("nlss_rank", 48.0, "nlss_rank: expected an integer in [1, 2147483647], got 48.0"),
    ("nlss_rank", "abc", "nlss_rank: expected an integer in [1, 2147483647], got 'abc'"),
    ("nlss_rank", "-3", "nlss_rank: expected an integer in [1, 2147483647], got -3"),
    ("nlss_rank", None, "nlss_rank: expected an integer in [1, 2147483647], got None"),
    ("nlss_K", "0", "nlss_K: expected an integer in [1, 2147483647], got 0"),
    ("nlss_sweeps", "-1", "nlss_sweeps: expected an integer in [0, 10000], got -1"),
    ("nlss_nu", "0", "nlss_nu: expected an integer in [1, 2147483647], got 0"),
    ("nlss_seed", "-2", "nlss_seed: expected an integer in [0, 2147483647], got -2"),
    ("nlss_seed", str(2**70), "nlss_seed: expected an integer in [0, 2147483647], got "),
    ("nlss_sweeps", "100000000", "nlss_sweeps: expected an integer in [0, 10000], got "
                                 "100000000"),
    ("nlss_omega", "fast", "nlss_omega: expected 'auto' or a number > 0, got 'fast'"),
    ("nlss_omega", "-0.5", "nlss_omega: expected 'auto' or a number > 0, got -0.5"),
    ("nlss_omega", "nan", "nlss_omega: expected 'auto' or a number > 0, got nan"),
    ("nlss_coarse", "amg", "nlss_coarse: expected one of svd, sa, sine, eig-ref, eig, fixed, "
                           "nlss, corrected; got 'amg'"),
    ("nlss_coarse", "subspace", "nlss_coarse: expected one of"),
    ("nlss_smoother", "gs", "nlss_smoother: expected one of jacobi, chebyshev, sor, icc; got 'gs'"),
    ("nlss_precision", "int4", "nlss_precision: expected one of int8, float32; got 'int4'"),
    ("nlss_model", "", "nlss_model: expected a non-empty string, got ''"),
    ("nlss_ranks", "4", "unknown option nlss_ranks (value '4'); expected one of nlss_coarse,"),
])
def test_bad_value_is_one_line_naming_option_value_and_expectation(key, value, expected):
    with pytest.raises(ValueError) as info:
        parse_options({key: value})
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message


def test_rank_above_k_for_kinds_with_s_only():
    with pytest.raises(ValueError, match="nlss_rank must be <= nlss_K for nlss_coarse svd; "
                                         "got nlss_rank 80 > nlss_K 72"):
        parse_options({"nlss_rank": "80"})
    assert parse_options({"nlss_rank": "80", "nlss_coarse": "sine"}).r == 80


def test_python_construction_is_validated_too():
    with pytest.raises(ValueError, match=r"nlss_rank: expected an integer in \[1, \d+\], got True"):
        TwoGridOptions(r=True)
    with pytest.raises(ValueError, match=r"nlss_nu: expected an integer in \[1, \d+\], got 2.5"):
        TwoGridOptions(nu=2.5)


@pytest.mark.parametrize(("coarse", "given", "unused"), [
    ("sa", {"nlss_K": "8", "nlss_rank": "4", "nlss_sweeps": "3"},
     ("nlss_rank", "nlss_K", "nlss_sweeps")),
    ("svd", {"nlss_model": "m.pt", "nlss_basis": "b.npz", "nlss_precision": "float32"},
     ("nlss_model", "nlss_precision", "nlss_basis")),
    ("svd", {"nlss_rank": "4", "nlss_K": "8", "nlss_nu": "2", "nlss_seed": "1"}, ()),
    ("fixed", {"nlss_basis": "b.npz", "nlss_rank": "4", "nlss_K": "8"}, ("nlss_K",)),
    ("nlss", {"nlss_model": "m.pt", "nlss_pde": "diffusion"}, ()),
    ("sine", {"nlss_model": "m.pt", "nlss_rank": "8"}, ("nlss_model",)),
])
def test_unused_options_per_kind(coarse, given, unused):
    assert unused_options(parse_options({"nlss_coarse": coarse, **given})) == unused


def test_checkpoint_fills_what_was_not_given():
    o = merge_checkpoint(parse_options({"nlss_coarse": "nlss", "nlss_model": "m.pt"}),
                         SETTINGS, where="m.pt")
    assert (o.K, o.sweeps, o.r, o.smoothing_omega, o.omega) == (8, 7, 6, 0.66, "auto")
    assert o.S_omega == 0.66
    assert o.from_model == {"nlss_K", "nlss_sweeps", "nlss_rank", "omega of S"}


def test_nlss_omega_is_the_cycles_weight_not_the_models_smoothing_weight():
    # The model smoothed S with 0.66; the user's nlss_omega is the cycle smoother's weight
    # (checked against the matrix, not the checkpoint): never a contradiction.
    o = merge_checkpoint(parse_options({"nlss_coarse": "nlss", "nlss_omega": "0.5"}),
                         SETTINGS, where="m.pt")
    assert (o.omega, o.S_omega) == (0.5, 0.66)


def test_a_given_k_equal_to_the_models_is_accepted_without_a_rank():
    o = merge_checkpoint(parse_options({"nlss_coarse": "nlss", "nlss_K": "8"}), SETTINGS)
    assert (o.K, o.r) == (8, 6) and "nlss_rank" in o.from_model
    assert parse_options({"nlss_K": "16"}).r == 16  # the default rank is at most K
    with pytest.raises(ValueError, match="nlss_rank must be <= nlss_K"):
        parse_options({"nlss_K": "16", "nlss_rank": "48"})


def test_checkpoint_rank_is_the_smaller_of_r_max_and_the_given_one():
    o = merge_checkpoint(parse_options({"nlss_coarse": "nlss", "nlss_rank": "4"}), SETTINGS)
    assert o.r == 4 and "nlss_rank" not in o.from_model
    with pytest.raises(ValueError, match=r"nlss_rank 7 exceeds r_max=6 of m.pt"):
        merge_checkpoint(parse_options({"nlss_coarse": "nlss", "nlss_rank": "7"}), SETTINGS,
                         where="m.pt")


@pytest.mark.parametrize(("given", "expected"), [
    ({"nlss_K": "72"}, "nlss_K 72 contradicts m.pt, which was trained with K=8"),
    ({"nlss_sweeps": "10"}, "nlss_sweeps 10 contradicts m.pt, which was trained with sweeps=7"),
    ({"nlss_pde": "anisotropic"}, "nlss_pde anisotropic contradicts m.pt, which was trained "
                                  "with pde=diffusion"),
])
def test_a_contradiction_is_refused_naming_both_values(given, expected):
    opts = parse_options({"nlss_coarse": "nlss", "nlss_rank": "4", **given})
    with pytest.raises(ValueError) as info:
        merge_checkpoint(opts, SETTINGS, where="m.pt")
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_agreeing_values_are_accepted():
    opts = parse_options({"nlss_coarse": "nlss", "nlss_rank": "4", "nlss_K": "8",
                          "nlss_sweeps": "7", "nlss_omega": "0.66", "nlss_pde": "diffusion"})
    o = merge_checkpoint(opts, SETTINGS)
    assert (o.K, o.sweeps, o.r) == (8, 7, 4) and o.from_model == {"omega of S"}


def test_kinds_and_smoothers_agree_with_the_core():
    from nlss_fenicsx import relaxation

    assert options.SMOOTHERS == relaxation.SMOOTHERS
    coarse = pytest.importorskip("nlss_fenicsx.coarse")
    if hasattr(coarse, "COARSE_KINDS"):
        assert set(options.COARSE_KINDS) == set(coarse.COARSE_KINDS)
