"""Gradient checking: compare a hand-written backward with central finite differences.

For a scalar function f of an array x, each partial derivative is approximated by
          df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2 h),     error O(h^2)
In float64 with h = 1e-6 this agrees with an exact gradient to about 1e-8 relative; a wrong
backward is off by O(1). The error is measured against the largest gradient magnitude, so tiny
entries do not inflate it.

To check an op's `backward(dout, cache)`, contract its output with a fixed random `dout`:
f(x) = sum(forward(x) * dout) has gradient exactly backward(dout, cache).

>>> import numpy as np
>>> x = np.array([1.0, -2.0])
>>> numerical_grad(lambda: float((x ** 2).sum()), x)
array([ 2., -4.])
"""

import numpy as np


def numerical_grad(f, x, h=1e-6, indices=None):
    """Central differences of scalar `f()` with respect to `x`, perturbed in place.
    `indices` (flat) limits the check to some entries; the others are left 0."""
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size) if indices is None else indices:
        original = flat_x[i]
        flat_x[i] = original + h
        f_plus = f()
        flat_x[i] = original - h
        f_minus = f()
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic, numeric):
    """max |a - n| / max(|n|), or the plain max error when the gradient is all zeros."""
    scale = max(np.abs(numeric).max(), np.abs(analytic).max(), 1e-12)
    return float(np.abs(analytic - numeric).max() / scale)
