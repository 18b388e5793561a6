"""The canonical names of parameters, activations and dropout masks, defined once.

Parameters use Hugging Face GPT-2's names without the `transformer.` prefix, in OpenAI's Conv1D
layout, so a checkpoint written here loads in `transformers` and vice versa. Activations and
dropout masks are named after the module that produces them; the PyTorch twin and the parity
suite use these same names, so two implementations can be compared tensor by tensor.

>>> from npgpt.config import GPTConfig
>>> cfg = GPTConfig.preset("tiny")
>>> param_shapes(cfg)["h.0.attn.c_attn.weight"]
(64, 192)
>>> num_params(GPTConfig.preset("gpt2"))
124439808
>>> activation_names(cfg)[:3]
['emb', 'h.0.ln_1', 'h.0.attn.qkv']
"""


def param_shapes(config):
    """Every parameter's name and shape, in the order OpenAI's checkpoints list them."""
    V, T, C = config.vocab_size, config.context_length, config.emb_dim
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(config.n_layers):
        h = f"h.{i}."
        shapes |= {
            h + "ln_1.weight": (C,),
            h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C),
            h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C),
            h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,),
            h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C),
            h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C),
            h + "mlp.c_proj.bias": (C,),
        }
        if not config.qkv_bias:
            del shapes[h + "attn.c_attn.bias"]
    shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,)}
    return shapes


def num_params(config):
    """How many numbers the model learns; the head is tied to wte, so it adds none. Counted by
    formula rather than from `param_shapes`, so that a config read from a hostile file (say
    n_layers = 10**9) can be sized up before anything of its size is built:

        wte V*C + wpe T*C + ln_f 2C + L blocks of  ln_1, ln_2          4C
                                                   c_attn (C, 3C), 3C  3C^2 + 3C (bias optional)
                                                   c_proj (C, C), C    C^2 + C
                                                   c_fc (C, 4C), 4C    4C^2 + 4C
                                                   mlp.c_proj (4C, C), C   4C^2 + C
    """
    V, T, C, L = config.vocab_size, config.context_length, config.emb_dim, config.n_layers
    block = 12 * C * C + 10 * C + (3 * C if config.qkv_bias else 0)
    return V * C + T * C + L * block + 2 * C


BLOCK_ACTIVATIONS = (
    "ln_1",  # (B, T, C)   LayerNorm before attention
    "attn.qkv",  # (B, T, 3C)  fused q, k, v projection
    "attn.probs",  # (B, H, T, T) attention probabilities, before dropout
    "attn.ctx",  # (B, T, C)   heads merged, before the output projection
    "attn.c_proj",  # (B, T, C)   attention output projection, before residual dropout
    "res_1",  # (B, T, C)   x + dropout(attention)
    "ln_2",  # (B, T, C)   LayerNorm before the MLP
    "mlp.c_fc",  # (B, T, 4C)  MLP expansion
    "mlp.gelu",  # (B, T, 4C)  GELU
    "mlp.c_proj",  # (B, T, C)   MLP projection, before residual dropout
    "out",  # (B, T, C)   res_1 + dropout(MLP): the block's output
)
BLOCK_DROPOUTS = {  # mask name -> the activation it is applied to
    "attn.drop": "attn.probs",
    "attn.resid_drop": "attn.c_proj",
    "mlp.resid_drop": "mlp.c_proj",
}


def activation_names(config):
    """Every named activation in forward order: `emb` (embeddings after dropout) ... `logits`."""
    names = ["emb"]
    for i in range(config.n_layers):
        names += [f"h.{i}.{name}" for name in BLOCK_ACTIVATIONS]
    return names + ["ln_f", "logits"]


def dropout_mask_shapes(config, batch_size, seq_len):
    """Name and shape of every dropout mask one forward pass uses."""
    B, T, C, H = batch_size, seq_len, config.emb_dim, config.n_heads
    shapes = {"emb.drop": (B, T, C)}
    for i in range(config.n_layers):
        shapes |= {
            f"h.{i}.attn.drop": (B, H, T, T),
            f"h.{i}.attn.resid_drop": (B, T, C),
            f"h.{i}.mlp.resid_drop": (B, T, C),
        }
    return shapes
