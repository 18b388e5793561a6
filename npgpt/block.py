"""One transformer block, GPT-2's pre-LayerNorm form: two residual branches on the stream x.

Forward   a   = attention(ln_1(x) @ W_attn + b_attn) @ W_proj + b_proj     x, a: (B, T, C)
          r   = x + dropout(a)                                            `res_1`
          m   = gelu(ln_2(r) @ W_fc + b_fc) @ W_mproj + b_mproj            hidden: (B, T, 4C)
          out = r + dropout(m)
Backward  A residual add copies its gradient to both inputs: d x gets d r directly plus what
          flows back through the branch. So, walking the forward in reverse:
          dr = dout + ln_2 backward(...(d out through the MLP branch))
          dx = dr + ln_1 backward(...(d r through the attention branch))
Names     One scheme throughout: an activation is the local variable named as in
          `npgpt.names.BLOCK_ACTIVATIONS` with `_` for `.` (`attn_qkv` is `attn.qkv`; a is
          `attn_c_proj`, m is `mlp_c_proj`), the op that made it leaves `<name>_cache` (the
          field `<name>` of BlockCache), its gradient is `d<name>`; a residual dropout's output
          is named after its mask (`attn_resid_drop`). The canonical names are given once, in
          the dicts of activations and of their gradients that forward and backward return.
`params` holds this block's parameters by their names inside the block (`ln_1.weight`, ...);
`masks` holds its dropout masks (`attn.drop`, `attn.resid_drop`, `mlp.resid_drop`; a missing
mask, or no `masks`, means no dropout there).
"""

from typing import NamedTuple

from npgpt import attention, dropout, gelu, layernorm, linear


class BlockCache(NamedTuple):
    """The caches of a block's ops, each named after the op's output, and its activations."""

    ln_1: layernorm.LayerNormCache
    attn_qkv: linear.LinearCache
    attn_ctx: attention.AttentionCache  # its k and v are also generation's KV cache
    attn_c_proj: linear.LinearCache
    attn_resid_drop: dropout.DropoutCache | None
    ln_2: layernorm.LayerNormCache
    mlp_c_fc: linear.LinearCache
    mlp_gelu: gelu.GeluCache
    mlp_c_proj: linear.LinearCache
    mlp_resid_drop: dropout.DropoutCache | None
    activations: dict  # {name in npgpt.names.BLOCK_ACTIVATIONS: array}


def weights(params, module):
    """(weight, bias) of `module`; only the qkv projection may lack its bias (config.qkv_bias)."""
    if module == "attn.c_attn":
        return params[f"{module}.weight"], params.get(f"{module}.bias")
    return params[f"{module}.weight"], params[f"{module}.bias"]


def forward(x, params, n_heads, eps, drop_rate=0.0, masks=None, past_kv=None):
    """(out, BlockCache); `past_kv` is generation's cached (k, v) of this block's attention."""
    masks = masks or {}
    # attention: x (B, T, C) -> ln_1 -> attn_qkv (B, T, 3C) -> attn_ctx -> attn_c_proj (B, T, C)
    ln_1, ln_1_cache = layernorm.forward(x, *weights(params, "ln_1"), eps)
    attn_qkv, attn_qkv_cache = linear.forward(ln_1, *weights(params, "attn.c_attn"))
    attn_ctx, attn_ctx_cache = attention.forward(
        attn_qkv, n_heads, drop_rate, masks.get("attn.drop"), past_kv
    )
    attn_c_proj, attn_c_proj_cache = linear.forward(attn_ctx, *weights(params, "attn.c_proj"))
    attn_resid_drop, attn_resid_drop_cache = dropout.forward(
        attn_c_proj, drop_rate, masks.get("attn.resid_drop")
    )
    res_1 = x + attn_resid_drop
    # MLP: res_1 (B, T, C) -> ln_2 -> mlp_c_fc, mlp_gelu (B, T, 4C) -> mlp_c_proj (B, T, C)
    ln_2, ln_2_cache = layernorm.forward(res_1, *weights(params, "ln_2"), eps)
    mlp_c_fc, mlp_c_fc_cache = linear.forward(ln_2, *weights(params, "mlp.c_fc"))
    mlp_gelu, mlp_gelu_cache = gelu.forward(mlp_c_fc)
    mlp_c_proj, mlp_c_proj_cache = linear.forward(mlp_gelu, *weights(params, "mlp.c_proj"))
    mlp_resid_drop, mlp_resid_drop_cache = dropout.forward(
        mlp_c_proj, drop_rate, masks.get("mlp.resid_drop")
    )
    out = res_1 + mlp_resid_drop
    activations = {
        "ln_1": ln_1,
        "attn.qkv": attn_qkv,
        "attn.probs": attn_ctx_cache.p,
        "attn.ctx": attn_ctx,
        "attn.c_proj": attn_c_proj,
        "res_1": res_1,
        "ln_2": ln_2,
        "mlp.c_fc": mlp_c_fc,
        "mlp.gelu": mlp_gelu,
        "mlp.c_proj": mlp_c_proj,
        "out": out,
    }
    cache = BlockCache(
        ln_1=ln_1_cache,
        attn_qkv=attn_qkv_cache,
        attn_ctx=attn_ctx_cache,
        attn_c_proj=attn_c_proj_cache,
        attn_resid_drop=attn_resid_drop_cache,
        ln_2=ln_2_cache,
        mlp_c_fc=mlp_c_fc_cache,
        mlp_gelu=mlp_gelu_cache,
        mlp_c_proj=mlp_c_proj_cache,
        mlp_resid_drop=mlp_resid_drop_cache,
        activations=activations,
    )
    return out, cache


def backward(dout, cache):
    """(dx, grads, activation_grads): the input's gradient (B, T, C), the parameters' gradients
    by their names in the block, and every activation's gradient by its canonical name."""
    grads = {}
    # MLP, in reverse; out = res_1 + mlp_resid_drop passes dout to both terms
    dmlp_c_proj = dropout.backward(dout, cache.mlp_resid_drop)
    dmlp_gelu, grads["mlp.c_proj.weight"], grads["mlp.c_proj.bias"] = linear.backward(
        dmlp_c_proj, cache.mlp_c_proj
    )
    dmlp_c_fc = gelu.backward(dmlp_gelu, cache.mlp_gelu)
    dln_2, grads["mlp.c_fc.weight"], grads["mlp.c_fc.bias"] = linear.backward(
        dmlp_c_fc, cache.mlp_c_fc
    )
    dres_1_via_mlp, grads["ln_2.weight"], grads["ln_2.bias"] = layernorm.backward(dln_2, cache.ln_2)
    dres_1 = dout + dres_1_via_mlp
    # attention, in reverse; res_1 = x + attn_resid_drop passes dres_1 to both terms
    dattn_c_proj = dropout.backward(dres_1, cache.attn_resid_drop)
    dattn_ctx, grads["attn.c_proj.weight"], grads["attn.c_proj.bias"] = linear.backward(
        dattn_c_proj, cache.attn_c_proj
    )
    dattn_qkv, dattn_probs = attention.backward(dattn_ctx, cache.attn_ctx)
    dln_1, grads["attn.c_attn.weight"], dattn_c_attn_bias = linear.backward(
        dattn_qkv, cache.attn_qkv
    )
    if dattn_c_attn_bias is not None:  # config.qkv_bias
        grads["attn.c_attn.bias"] = dattn_c_attn_bias
    dx_via_attn, grads["ln_1.weight"], grads["ln_1.bias"] = layernorm.backward(dln_1, cache.ln_1)
    dx = dres_1 + dx_via_attn
    activation_grads = {
        "ln_1": dln_1,
        "attn.qkv": dattn_qkv,
        "attn.probs": dattn_probs,
        "attn.ctx": dattn_ctx,
        "attn.c_proj": dattn_c_proj,
        "res_1": dres_1,
        "ln_2": dln_2,
        "mlp.c_fc": dmlp_c_fc,
        "mlp.gelu": dmlp_gelu,
        "mlp.c_proj": dmlp_c_proj,
        "out": dout,
    }
    return dx, grads, activation_grads
