"""The oracle's own rules: how errors are measured, what counts as a failure, what a report says,
and that the tolerances are stated, justified and as tight as measured."""

import numpy as np
import pytest

from npgpt.config import GPTConfig
from parity import oracle, report, tolerances

CFG = GPTConfig(vocab_size=11, context_length=4, emb_dim=6, n_heads=2, n_layers=1)


def test_relative_error_is_measured_against_the_reference_max():
    ref = np.array([[10.0, -0.001], [2.0, 0.0]])
    cand = ref + np.array([[0.0, 0.001], [0.0, 0.0]])  # 100% off elementwise, 1e-4 of the max
    assert oracle.errors(ref, cand) == pytest.approx((0.001, 1e-4))


def test_nan_inf_and_zero_references():
    assert oracle.errors(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == (0.0, 0.0)
    assert oracle.errors(np.array([1.0, 2.0]), np.array([np.nan, 2.0])) == (np.inf, np.inf)
    assert oracle.errors(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert oracle.errors(np.zeros(3), np.full(3, 1e-30))[1] == np.inf


def test_missing_and_misshapen_tensors_fail():
    names = oracle.tensor_names(CFG)
    reference = {name: np.ones(2) for name in names}
    candidate = dict(reference)
    del candidate["h.0.attn.probs"]
    candidate["loss"] = np.ones(3)
    comparison = oracle.compare(reference, candidate, "float64")
    assert {row.name for row in comparison.failures} == {"h.0.attn.probs", "loss"}
    assert comparison.first_divergence == "h.0.attn.probs"


def test_report_order_and_first_divergence():
    names = oracle.tensor_names(CFG)
    assert names[0] == "emb" and names.index("logits") < names.index("loss")
    assert names[names.index("loss") + 1] == "logits.grad"
    assert "emb.grad" in names and names[-1] == "ln_f.bias.grad"
    assert "h.0.attn.probs" not in oracle.tensor_names(CFG, with_probs=False)
    reference = {name: np.ones(3) for name in names}
    candidate = dict(reference, **{"h.0.mlp.gelu": np.full(3, 1.1), "wte.weight.grad": np.zeros(3)})
    comparison = oracle.compare(reference, candidate, "float64")
    assert comparison.first_divergence == comparison.first_diverging_activation == "h.0.mlp.gelu"
    message = comparison.failure_message()
    assert "first diverging tensor: h.0.mlp.gelu" in message
    assert "| h.0.mlp.gelu | (3,) | 1.000e-01 | 1.000e-01 | 1e-10 | FAIL |" in message


def test_parity_report_lists_every_tensor(tmp_path):
    names = oracle.tensor_names(CFG)
    run = {name: np.ones(2) for name in names}
    comparison = oracle.compare(run, run, "float32")
    path = tmp_path / "out.md"
    report.write(path, [("a case", comparison)])
    text = path.read_text()
    assert all(f"| {name} |" in text for name in names)
    tol = tolerances.tolerance("float32", "wte.weight.grad")
    assert f"| param grad | 0.000e+00 | {tol:.0e} | ok |" in text


def test_every_tolerance_is_stated_with_a_reason_and_as_tight_as_measured():
    assert tolerances.tolerance("float64", "wte.weight.grad") == tolerances.FLOAT64 <= 1e-10
    assert tolerances.FLOAT64_REASON
    for mode in tolerances.MODES[1:]:
        assert tolerances.REASONS[mode]
        for kind in tolerances.KINDS:
            tol, measured = tolerances.TOLERANCES[mode][kind], tolerances.MEASURED[mode][kind]
            assert measured < tol <= 25 * measured, (mode, kind, measured, tol)


def test_tensor_kinds():
    kinds = {name: tolerances.kind(name) for name in oracle.tensor_names(CFG)}
    assert kinds["h.0.attn.probs"] == "attn.probs" and kinds["logits"] == "logits"
    assert kinds["emb.grad"] == "activation grad" and kinds["wte.weight.grad"] == "param grad"
    assert kinds["loss"] == "loss" and kinds["h.0.ln_1"] == "activation"
