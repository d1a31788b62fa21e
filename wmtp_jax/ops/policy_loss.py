"""The MTP cross entropy of a policy model: dense (`[B,S,K,V]` logits) or chunked over the
vocabulary from the head latents (no `[B,S,K,V]` logits)."""

from __future__ import annotations

from wmtp_jax.ops.chunked_loss import chunked_mtp_ce_loss
from wmtp_jax.ops.mtp_loss import compute_mtp_ce_loss, weigh_heads


def policy_mtp_loss(
    policy,
    input_ids,
    labels,
    attention_mask,
    weights=None,
    *,
    chunk_size: int = 0,
    segment_ids=None,
    positions=None,
    n_future: int | None = None,
    head_weights=None,
) -> dict:
    """compute_mtp_ce_loss of `policy(input_ids)`; chunk_size > 0 uses the chunked CE on the
    head latents (`policy.latents`, `policy.norm.scale`, `policy.output_kernel()`). Packed
    batches pass `segment_ids` / `positions` `[B,S]` (attention and targets stay inside each
    sequence). `n_future`: only the first n heads' CE (None = all K; 1 = next-token CE).
    `head_weights` `[n]` (None = uniform): the scalar losses are the head-weighted means
    (`weigh_heads`). Returns the loss dict (weighted / unweighted CE, per-head CE, ...)."""
    pk = dict(segment_ids=segment_ids, positions=positions)
    if chunk_size and chunk_size > 0:
        _, lat = policy.latents(input_ids, **pk)
        out = chunked_mtp_ce_loss(
            lat if n_future is None else lat[:, :, :n_future],
            policy.norm.scale[...],
            policy.output_kernel(),
            labels,
            attention_mask,
            weights,
            norm_eps=policy.args.norm_eps,
            chunk_size=int(chunk_size),
            compute_dtype=policy.args.dtype,
            segment_ids=segment_ids,
        )
    else:
        logits = policy(input_ids, return_all_heads=True, **pk)
        out = compute_mtp_ce_loss(
            logits, labels, attention_mask, weights, n_future, segment_ids=segment_ids
        )
    return weigh_heads(out, head_weights)
