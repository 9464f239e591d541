"""Outputs declared by named axes (`bnclaims.registry.axes`, `spread`)."""

import numpy as np
import pytest

from bnclaims.errors import ExperimentDefinitionError
from bnclaims.experiments import axes, spread


def test_axes_expand_brackets_and_fields_with_labels():
    got = axes({"test_acc[arm]": "test accuracy, {arm}", "best_at_edge": "fixed",
                "curve_{what}_update_{net}": "{what} elasticity, {net}"},
               arm={"bn": "BN MLP", "plain": "plain MLP"}, what=("input", "grad"), net=("bn", "plain"))
    assert got == {
        "test_acc_bn": "test accuracy, BN MLP", "test_acc_plain": "test accuracy, plain MLP",
        "best_at_edge": "fixed",
        "curve_input_update_bn": "input elasticity, bn", "curve_input_update_plain": "input elasticity, plain",
        "curve_grad_update_bn": "grad elasticity, bn", "curve_grad_update_plain": "grad elasticity, plain",
    }


def test_axes_two_axes_first_slowest():
    assert list(axes({"d[net, lr]": "{net} {lr}"}, net=("bn", "plain"), lr=("slow", "fast"))) == [
        "d_bn_slow", "d_bn_fast", "d_plain_slow", "d_plain_fast"]


def test_axes_unknown_axis_is_a_definition_error():
    with pytest.raises(ExperimentDefinitionError, match=r"names axes \['arm'\]"):
        axes({"acc[arm]": "x"}, net=("bn",))


def test_spread_is_the_inverse_of_axes_order():
    acc = np.array([[0.5, 0.25], [0.75, 1.0]])
    out = spread("acc[net, lr]", acc, net=("bn", "plain"), lr=("slow", "fast"))
    assert out == {"acc_bn_slow": 0.5, "acc_bn_fast": 0.25, "acc_plain_slow": 0.75, "acc_plain_fast": 1.0}
    assert all(type(v) is float for v in out.values())
    assert list(out) == list(axes({"acc[net, lr]": ""}, net=("bn", "plain"), lr=("slow", "fast")))


def test_spread_keeps_trailing_axes_as_series():
    curves = np.arange(12.0).reshape(2, 6)
    out = spread("curve[arm]", curves, arm=("bn", "plain"))
    np.testing.assert_array_equal(out["curve_plain"], curves[1])
