"""The property: for every drawn model, batch, dtype, dropout masks and parameters, npgpt and
torchgpt agree on every activation, the loss, every activation's gradient (the embeddings'
output, `emb.grad`, included) and every parameter's gradient, within `parity.tolerances`.

Both torch attention paths are checked. `math` takes the shared attention-dropout mask and
exposes `attn.probs`; `sdpa` (F.scaled_dot_product_attention) does neither, so its draws have
no dropout and its comparison has no `attn.probs` (every other tensor is compared). On a CUDA
machine the same properties run torch in float32 on the GPU, TF32 off and on, against npgpt in
float64.
"""

import pytest
from hypothesis import given

from parity import oracle
from parity.conftest import DEVICES
from parity.strategies import DTYPES, cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_case(case, attn, device):
    dtype = case.dtype if device == "cpu" else "float64"  # GPU runs compare to npgpt float64
    comparison = oracle.check(
        case.params(dtype),
        case.config,
        case.idx,
        case.targets,
        case.masks,
        case.train,
        attn,
        device,
        label=f"attn={attn}, device={device}",
    )
    oracle.assert_parity(comparison)


@pytest.mark.parametrize("device", DEVICES)
@given(case=cases(dropout=True))
def test_math_attention(case, device):
    check_case(case, "math", device)


@pytest.mark.parametrize("device", DEVICES)
@given(case=cases(dropout=False, dtypes=DTYPES))
def test_sdpa_attention(case, device):
    check_case(case, "sdpa", device)
