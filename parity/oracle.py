"""The oracle: run one case through npgpt and torchgpt, and compare every named tensor.

A run is an ordered {name: array} of everything the two backends must agree on, in the order a
reader follows the computation:

    emb, h.0.ln_1, ... , ln_f, logits          every activation, forward order (npgpt.names)
    loss
    logits.grad, ln_f.grad, ... , emb.grad     d loss / d activation, backward order
    wte.weight.grad, ... , ln_f.bias.grad      d loss / d parameter (npgpt.names.param_shapes)

`compare(reference, candidate, mode)` measures, per tensor, the max absolute error and the max
relative error: max |candidate - reference| / max |reference|, i.e. relative to the reference
tensor's largest magnitude (an elementwise relative error would blow up on the many entries
that are ~0 by cancellation, e.g. masked attention or ignored targets). Each tensor passes when
its relative error is within `parity.tolerances.tolerance(mode, name)`. The first failing tensor
in the order above is where the two implementations part ways: everything after it inherits the
error, so a report names it first.
"""

import contextlib
import dataclasses

import numpy as np
import torch

import torchgpt
from npgpt import model as npmodel
from npgpt.names import activation_names, param_shapes
from parity.tolerances import mode_for, tolerance

GRAD = ".grad"


def tensor_names(config, with_probs=True):
    """Every compared name, in report order (see the module docstring)."""
    acts = activation_names(config)
    if not with_probs:  # sdpa never materialises the attention probabilities
        acts = [name for name in acts if not name.endswith("attn.probs")]
    return (
        acts
        + ["loss"]
        + [name + GRAD for name in reversed(acts)]
        + [name + GRAD for name in param_shapes(config)]
    )


def run_npgpt(params, config, idx, targets, masks=None, train=False):
    """npgpt's forward + backward: {name: array} in `tensor_names` order."""
    _, loss, cache = npmodel.forward(params, config, idx, targets, train=train, dropout_masks=masks)
    acts = dict(cache.activations)  # backward uses the cache up
    grads, act_grads = npmodel.backward(cache, return_activation_grads=True)
    out = {name: acts[name] for name in activation_names(config)}
    out["loss"] = np.asarray(loss)
    out |= {name + GRAD: act_grads[name] for name in reversed(activation_names(config))}
    out |= {name + GRAD: grads[name] for name in param_shapes(config)}
    return out


def to_numpy(tensor):
    return tensor.detach().cpu().numpy()


def run_torch(gpt, idx, targets, masks=None, train=False):
    """torchgpt's forward + backward on `gpt` (a torchgpt.GPT, any device and dtype), with the
    same inputs and dropout masks: {name: numpy array} in `tensor_names` order. An activation
    the model does not capture, or one that receives no gradient, is simply absent, and
    `compare` reports it as missing."""
    device = next(gpt.parameters()).device
    gpt.train(train)
    gpt.zero_grad(set_to_none=True)
    capture = {}
    tmasks = None if masks is None else {k: torch.from_numpy(m) for k, m in masks.items()}
    _, loss = gpt(
        torch.from_numpy(idx).to(device),
        torch.from_numpy(targets).to(device),
        dropout_masks=tmasks,
        capture=capture,
    )
    loss.backward()
    out = {
        name: to_numpy(capture[name]) for name in activation_names(gpt.config) if name in capture
    }
    out["loss"] = to_numpy(loss)
    out |= {
        name + GRAD: to_numpy(capture[name].grad)
        for name in reversed(activation_names(gpt.config))
        if name in capture and capture[name].grad is not None
    }
    named = dict(gpt.named_parameters())
    out |= {
        name + GRAD: to_numpy(named[name].grad)
        for name in param_shapes(gpt.config)
        if named[name].grad is not None
    }
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    tol: float
    problem: str = ""  # "missing" / "shape (..) vs (..)" / "" when the numbers were compared

    @property
    def ok(self):
        return not self.problem and self.max_rel <= self.tol

    @property
    def badness(self):
        """How far past its tolerance a tensor is (> 1 fails); the worst-first sort key."""
        if self.problem:
            return np.inf
        return self.max_rel / self.tol


def errors(reference, candidate):
    """(max abs error, max abs error / max |reference|), both in float64."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.size == 0:
        return 0.0, 0.0
    finite = np.isfinite(ref) & np.isfinite(cand)
    if not finite.all():  # a NaN or inf on either side passes only if both sides agree on it
        if np.array_equal(ref, cand, equal_nan=True):
            ref, cand = np.where(finite, ref, 0.0), np.where(finite, cand, 0.0)
        else:
            return np.inf, np.inf
    max_abs = float(np.max(np.abs(cand - ref)))
    scale = float(np.max(np.abs(ref)))
    if scale == 0.0:
        return max_abs, 0.0 if max_abs == 0.0 else np.inf
    return max_abs, max_abs / scale


@dataclasses.dataclass
class Comparison:
    mode: str
    rows: list
    label: str = ""

    @property
    def ok(self):
        return all(row.ok for row in self.rows)

    @property
    def failures(self):
        return [row for row in self.rows if not row.ok]

    @property
    def first_divergence(self):
        """The first failing tensor in report order (forward activations first), or None."""
        failures = self.failures
        return failures[0].name if failures else None

    @property
    def first_diverging_activation(self):
        """The first failing activation in forward order, or None if every activation agrees
        (then the slip is in a backward pass, and `first_divergence` names the gradient)."""
        for row in self.failures:
            if row.name == "loss" or row.name.endswith(GRAD):
                return None
            return row.name
        return None

    def worst(self, n=10):
        return sorted(self.rows, key=lambda row: row.badness, reverse=True)[:n]

    def table(self, rows=None):
        """A Markdown table: name, shape, max abs error, max rel error, tolerance, verdict."""
        rows = self.rows if rows is None else rows
        lines = [
            "| tensor | shape | max abs err | max rel err | tolerance | |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            verdict = row.problem or ("ok" if row.ok else "FAIL")
            lines.append(
                f"| {row.name} | {tuple(row.shape)} | {row.max_abs:.3e} | {row.max_rel:.3e} "
                f"| {row.tol:.0e} | {verdict} |"
            )
        return "\n".join(lines)

    def failure_message(self, n=10):
        first_act = self.first_diverging_activation
        return "\n".join(
            [
                f"parity failed{' for ' + self.label if self.label else ''} ({self.mode}): "
                f"{len(self.failures)} of {len(self.rows)} tensors out of tolerance",
                f"first diverging tensor: {self.first_divergence}",
                "first diverging activation in forward order: "
                + (first_act or "none (every activation agrees; the slip is in a backward)"),
                f"worst {min(n, len(self.rows))} tensors:",
                self.table(self.worst(n)),
            ]
        )

    def max_rel_by_kind(self, kind_of):
        """{kind: largest relative error among the tensors of that kind}."""
        worst = {}
        for row in self.rows:
            kind = kind_of(row.name)
            worst[kind] = max(worst.get(kind, 0.0), row.max_rel)
        return worst


def compare(reference, candidate, mode, names=None, label=""):
    """Compare two runs tensor by tensor; `names` (default: the reference's) fixes the order."""
    names = list(reference) if names is None else names
    rows = []
    for name in names:
        tol = tolerance(mode, name)
        ref, cand = reference.get(name), candidate.get(name)
        if ref is None or cand is None:
            side = "reference" if ref is None else "candidate"
            shape = np.shape(cand if ref is None else ref)
            rows.append(Row(name, shape, np.inf, np.inf, tol, f"missing in {side}"))
        elif np.shape(ref) != np.shape(cand):
            problem = f"shape {np.shape(cand)} vs {np.shape(ref)}"
            rows.append(Row(name, np.shape(ref), np.inf, np.inf, tol, problem))
        else:
            rows.append(Row(name, np.shape(ref), *errors(ref, cand), tol))
    return Comparison(mode, rows, label)


def assert_parity(comparison):
    if not comparison.ok:
        raise AssertionError(comparison.failure_message())


def torch_placement(device, dtype):
    """(torch device, torch dtype) for a parity device: "cpu" runs the given dtype; "cuda" and
    "cuda-tf32" run float32 on the GPU (against npgpt in float64)."""
    if device == "cpu":
        return "cpu", np.dtype(dtype).name
    return "cuda", "float32"


@contextlib.contextmanager
def matmul_precision(device):
    """TF32 matmuls on for "cuda-tf32", off for "cuda" (plain float32); the CPU has no TF32."""
    if device == "cpu":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = device == "cuda-tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def mode_of(device, dtype):
    return mode_for(dtype, "cpu" if device == "cpu" else "cuda", tf32=device == "cuda-tf32")


def check(
    params, config, idx, targets, masks=None, train=False, attn="math", device="cpu", label=""
):
    """npgpt on `params` vs torchgpt built from the same `params` (`GPT.from_params`), with the
    same inputs and masks, on `device`; returns the `Comparison`. On a GPU, pass float64 params:
    npgpt runs them as they are, torch in float32."""
    dtype = next(iter(params.values())).dtype
    if device != "cpu":  # torch computes in float32: npgpt gets those same numbers, in float64
        params = {name: v.astype(np.float32).astype(np.float64) for name, v in params.items()}
    reference = run_npgpt(params, config, idx, targets, masks, train)
    torch_device, torch_dtype = torch_placement(device, dtype)
    gpt = torchgpt.GPT.from_params(config, params, attn, torch_device, torch_dtype)
    with matmul_precision(device):
        candidate = run_torch(gpt, idx, targets, masks, train)
    names = tensor_names(config, with_probs=attn == "math")
    return compare(reference, candidate, mode_of(device, dtype), names, label)
