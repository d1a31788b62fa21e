"""The verifiable weight picture: a few validation samples, each response token drawn on a
background coloured by its weight (batch whitening, as validation), logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging

from wmtp_jax import ops

MAX_SAMPLES = 4
CHARS_PER_LINE = 96


def _token_texts(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def draw(samples, *, vmin: float, vmax: float, title: str = ""):
    """samples: [(token strings, weights)] → matplotlib Figure; tokens flow left to right,
    wrapping at newlines and at CHARS_PER_LINE characters, colour = weight (viridis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    norm = colors.Normalize(vmin=vmin, vmax=vmax)
    cmap = plt.get_cmap("viridis")
    layout, line = [], 0
    for s, (toks, ws) in enumerate(samples):
        layout.append(("header", f"sample {s}", line, 0, None))
        line += 1
        col = 0
        for tok, w in zip(toks, ws):
            for j, piece in enumerate(tok.split("\n")):
                if j > 0:
                    line, col = line + 1, 0
                if not piece:
                    continue
                if col + len(piece) > CHARS_PER_LINE:
                    line, col = line + 1, 0
                layout.append(("tok", piece, line, col, float(w)))
                col += len(piece)
        line += 2
    n_lines = max(line, 1)
    fig, ax = plt.subplots(figsize=(14, 0.22 * n_lines + 1.0))
    ax.set_xlim(0, CHARS_PER_LINE)
    ax.set_ylim(n_lines, -1)
    ax.axis("off")
    for kind, text, ln, col, w in layout:
        if kind == "header":
            ax.text(0, ln, text, fontsize=8, fontweight="bold", va="center")
            continue
        rgba = cmap(norm(w))
        ax.add_patch(plt.Rectangle((col, ln - 0.45), len(text), 0.9, color=rgba, lw=0))
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        ax.text(
            col,
            ln,
            text,
            fontsize=7,
            family="monospace",
            va="center",
            color="black" if lum > 0.5 else "white",
        )
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01, label="token weight")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def log_weight_picture(model, frozen, tracker, *, config, tokenizer, wc, val_iter_fn):
    """on_end hook: weights of the first validation samples → `<output_dir>/token_weights.png`
    and MLflow artifact `token_weights.png`."""
    from wmtp_jax.pipelines import verifiable

    if jax.process_index() != 0 or frozen is None:
        return None
    batch = next(iter(val_iter_fn()))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    ids, am, labels, rewards = verifiable.rows(batch)
    pk = verifiable.packing(batch)  # a packed row shows its sequences one after the other
    rewards = verifiable.packed_rewards(batch, rewards)
    m = ops.loss_mask_of(labels, am)
    values = verifiable.critic_values(frozen, ids, am, **pk)
    w, _, _ = verifiable.token_weights(values, rewards, m, wc, None, pk["segment_ids"])
    ids, m, w = np.asarray(ids), np.asarray(m), np.asarray(w)
    samples = []
    for r in range(min(MAX_SAMPLES, ids.shape[0])):
        on = m[r] > 0
        if on.any():
            samples.append((_token_texts(tokenizer, ids[r][on]), w[r][on]))
    if not samples:
        return None
    fig = draw(
        samples,
        vmin=wc.min_weight,
        vmax=wc.max_weight,
        title=f"verifiable token weights ({wc.advantage}, batch whitening, β={wc.beta})",
    )
    fig.set_dpi(110)
    tracker.log_figure(fig, "token_weights.png")  # writes <output_dir>/token_weights.png
    path = Path(config.output_dir).absolute() / "token_weights.png"
    import matplotlib.pyplot as plt

    plt.close(fig)
    logging.info("weight picture: %s", path)
    return path
