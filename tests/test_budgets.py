"""SEB layer weights: the formula on hand-set signals, regime table, degenerate signals."""

import pytest

from hf_mpprune.methods.common import SEBRegime, seb_regime, seb_weights


def test_seb_weights_formula():
    roles = {"a": "attn", "b": "mlp", "c": "other", "d": "mlp"}
    sig = {"a": 1.0, "b": 2.0, "c": 3.0, "d": None}  # mean 2, population sd sqrt(2/3)
    reg = SEBRegime("sigma_plus", beta=1.0, decay_end=0.5)
    w = seb_weights(sig, roles, 0.25, reg)  # d = 0.5
    z = 1 / (2 / 3) ** 0.5
    assert w["a"] == pytest.approx(1 - 0.5 * z)
    assert w["b"] == pytest.approx(1.0)
    assert w["c"] == pytest.approx(1 + 0.5 * z)
    assert w["d"] == 1.0  # missing signal -> z = 0
    assert seb_weights(sig, roles, 0.6, reg) == dict.fromkeys(roles, 1.0)  # s >= s_d: plain magnitude


def test_floor_role_betas_and_degenerate_signal():
    roles = {"a": "attn", "b": "mlp", "c": "other"}
    reg = SEBRegime("sigma_plus", beta=1.5, decay_end=0.85, beta_attn=1.0, beta_mlp=2.0)
    w = seb_weights({"a": 0.0, "b": 0.0, "c": 100.0}, roles, 0.0, reg)
    assert w["a"] == pytest.approx(1 - 2**-0.5)
    assert w["b"] == pytest.approx(0.1)  # 1 - 2/sqrt(2) < 0.1 -> floor
    assert w["c"] == pytest.approx(1 + 1.5 * 2**0.5)
    assert seb_weights({"a": 1.0, "b": 1.0, "c": 1.0}, roles, 0.1, reg) == dict.fromkeys(roles, 1.0)


@pytest.mark.parametrize(
    ("s", "signal", "beta"),
    [(0.1, "hill_alpha", 0.5), (0.3, "sigma_plus", 1.0), (0.5, "sigma_plus", 1.25), (0.6, "sigma_plus", 1.5)],
)
def test_four_regime_table(s, signal, beta):
    r = seb_regime(s)
    assert (r.signal, r.beta) == (signal, beta)
    assert seb_regime(0.6).beta_mlp == 2.0
