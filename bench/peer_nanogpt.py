"""The peer torchgpt is timed against: a GPT-2 written the way nanoGPT's model.py writes one.

`nn.Linear` layers (weights in torch's (out, in) layout, so every product is x @ W^T), one fused
q/k/v projection, `F.scaled_dot_product_attention(is_causal=True)`, the LM head a bias-free
`nn.Linear` sharing wte's weight, and `F.cross_entropy`. No dropout layers: the benchmarks run at
drop_rate 0, where torchgpt skips dropout too. It is built from npgpt's parameters, so both
models compute the same loss on the same tokens (the bench checks it).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x):
        B, T, C = x.shape
        heads = (B, T, self.n_heads, C // self.n_heads)
        q, k, v = (part.view(heads).transpose(1, 2) for part in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PeerGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.emb_dim)
        self.wpe = nn.Embedding(config.context_length, config.emb_dim)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.emb_dim, eps=config.ln_eps)
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx, targets):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def from_params(config, params):
    """A PeerGPT holding npgpt's `params`: Conv1D weights (in, out) become nn.Linear's (out, in),
    copied contiguous so that the peer runs on its own layout, not on a transposed view."""
    model = PeerGPT(config)
    state = {}
    for name, value in params.items():
        tensor = torch.from_numpy(value)
        is_conv1d = name.endswith(".weight") and (".attn.c_" in name or ".mlp.c_" in name)
        state[name] = tensor.T.contiguous() if is_conv1d else tensor.clone()
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state, strict=True)
    return model
