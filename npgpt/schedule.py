"""The learning-rate schedule: linear warm-up, then cosine decay to a floor.

    step < W          lr = max_lr * (step + 1) / W                     warm-up from ~0
    W <= step < S     lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                      progress = (step - W) / (S - W), from 0 to 1
    step >= S         lr = min_lr

(W = warmup_steps, S = max_steps.) A pure function of the step: a resumed run needs no
scheduler state, and both backends get the very same float.

>>> [round(learning_rate(s, 1.0, 0.1, 2, 6), 4) for s in range(7)]
[0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1]
"""

import math


def learning_rate(step, max_lr, min_lr, warmup_steps, max_steps):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
