"""One transformer block, GPT-2's pre-LayerNorm form: two residual branches on the stream x.

Forward   a   = attention(ln_1(x)) @ W_proj + b_proj             x: (B, T, C)
          r   = x + dropout(a)                                   `res_1`
          m   = gelu(ln_2(r) @ W_fc + b_fc) @ W_mproj + b_mproj  hidden: (B, T, 4C)
          out = r + dropout(m)
Backward  A residual add copies its gradient to both inputs: d x gets d r directly plus what
          flows back through the branch. So, walking the forward in reverse:
          dr = dout + ln_2 backward(...(d out through the MLP branch))
          dx = dr + ln_1 backward(...(d r through the attention branch))
`p` holds this block's parameters by their names inside the block (`ln_1.weight`, ...); `keep`
holds its dropout masks (`attn.drop`, `attn.resid_drop`, `mlp.resid_drop`; None = no dropout).
"""

from npgpt import attention, dropout, gelu, layernorm, linear


def forward(x, p, n_heads, eps, drop_rate=0.0, keep=None, past_kv=None):
    keep = keep or {}
    ops, acts = {}, {}
    acts["ln_1"], ops["ln_1"] = layernorm.forward(x, p["ln_1.weight"], p["ln_1.bias"], eps)
    acts["attn.qkv"], ops["c_attn"] = linear.forward(
        acts["ln_1"], p["attn.c_attn.weight"], p.get("attn.c_attn.bias")
    )
    acts["attn.ctx"], ops["attn"] = attention.forward(
        acts["attn.qkv"], n_heads, drop_rate, keep.get("attn.drop"), past_kv
    )
    acts["attn.probs"] = ops["attn"]["p"]
    acts["attn.c_proj"], ops["c_proj"] = linear.forward(
        acts["attn.ctx"], p["attn.c_proj.weight"], p["attn.c_proj.bias"]
    )
    a, ops["attn_drop"] = dropout.forward(
        acts["attn.c_proj"], drop_rate, keep.get("attn.resid_drop")
    )
    acts["res_1"] = x + a
    acts["ln_2"], ops["ln_2"] = layernorm.forward(
        acts["res_1"], p["ln_2.weight"], p["ln_2.bias"], eps
    )
    acts["mlp.c_fc"], ops["c_fc"] = linear.forward(
        acts["ln_2"], p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]
    )
    acts["mlp.gelu"], ops["gelu"] = gelu.forward(acts["mlp.c_fc"])
    acts["mlp.c_proj"], ops["mlp_proj"] = linear.forward(
        acts["mlp.gelu"], p["mlp.c_proj.weight"], p["mlp.c_proj.bias"]
    )
    m, ops["mlp_drop"] = dropout.forward(acts["mlp.c_proj"], drop_rate, keep.get("mlp.resid_drop"))
    acts["out"] = acts["res_1"] + m
    present_kv = (ops["attn"]["k"], ops["attn"]["v"])
    return acts["out"], dict(ops=ops, acts=acts, present_kv=present_kv)


def backward(dout, cache):
    """Returns dx, the parameter gradients by name, and the gradient of every activation."""
    ops = cache["ops"]
    g, d = {}, {"out": dout}
    d["mlp.c_proj"] = dropout.backward(dout, ops["mlp_drop"])
    d["mlp.gelu"], g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = linear.backward(
        d["mlp.c_proj"], ops["mlp_proj"]
    )
    d["mlp.c_fc"] = gelu.backward(d["mlp.gelu"], ops["gelu"])
    d["ln_2"], g["mlp.c_fc.weight"], g["mlp.c_fc.bias"] = linear.backward(
        d["mlp.c_fc"], ops["c_fc"]
    )
    dr, g["ln_2.weight"], g["ln_2.bias"] = layernorm.backward(d["ln_2"], ops["ln_2"])
    d["res_1"] = dout + dr
    d["attn.c_proj"] = dropout.backward(d["res_1"], ops["attn_drop"])
    d["attn.ctx"], g["attn.c_proj.weight"], g["attn.c_proj.bias"] = linear.backward(
        d["attn.c_proj"], ops["c_proj"]
    )
    d["attn.qkv"], d["attn.probs"] = attention.backward(d["attn.ctx"], ops["attn"])
    d["ln_1"], g["attn.c_attn.weight"], c_attn_bias = linear.backward(d["attn.qkv"], ops["c_attn"])
    if c_attn_bias is not None:
        g["attn.c_attn.bias"] = c_attn_bias
    dx_branch, g["ln_1.weight"], g["ln_1.bias"] = layernorm.backward(d["ln_1"], ops["ln_1"])
    dx = d["res_1"] + dx_branch
    return dx, g, d
