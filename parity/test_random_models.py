"""The property: for every drawn model, batch, dtype, dropout masks and parameters, npgpt and
torchgpt agree on every activation, the loss, every activation's gradient (the embeddings'
output, `emb.grad`, included) and every parameter's gradient, within `parity.tolerances`.

Both torch attention paths are checked. `math` takes the shared attention-dropout mask and
exposes `attn.probs`; `sdpa` (F.scaled_dot_product_attention) does neither, so its draws have
no dropout and its comparison has no `attn.probs` (every other tensor is compared). On a CUDA
machine the same properties run torch in float32 on the GPU, TF32 off and on, against npgpt in
float64, over GPT-2-like draws (`tolerances.GPU_SCALES`, `tolerances.GPU_MIN_EMB_DIM`).
"""

import pytest
from hypothesis import given

from parity import oracle, tolerances
from parity.conftest import CUDA_SKIP
from parity.strategies import cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GPUS = [pytest.param(device, marks=CUDA_SKIP) for device in ("cuda", "cuda-tf32")]
GPU_CASES = dict(
    dtypes=("float64",), scales=tolerances.GPU_SCALES, min_emb_dim=tolerances.GPU_MIN_EMB_DIM
)


def check_case(case, attn, device):
    comparison = oracle.check(
        case.params(),
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


@given(case=cases(dropout=True))
def test_math_attention(case):
    check_case(case, "math", "cpu")


@given(case=cases(dropout=False))
def test_sdpa_attention(case):
    check_case(case, "sdpa", "cpu")


@pytest.mark.parametrize("device", GPUS)
@given(case=cases(dropout=True, **GPU_CASES))
def test_math_attention_on_gpu(case, device):
    check_case(case, "math", device)


@pytest.mark.parametrize("device", GPUS)
@given(case=cases(dropout=False, **GPU_CASES))
def test_sdpa_attention_on_gpu(case, device):
    check_case(case, "sdpa", device)
