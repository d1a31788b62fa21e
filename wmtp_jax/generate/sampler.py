"""KV-cache sampler: one jitted program per (batch, prompt bucket, max_new_tokens) that runs a
whole batch's generation on device (`decode.decode_loop`, or `speculative.speculative_loop` for
self-speculative MTP decoding), and the host driver that batches prompts into it.

Prompts are right-padded to a bucket length `L` (a power of two ≥ `min_bucket`), so prompt
lengths compile once per bucket. Sampling: `sampling`; stops: `stops`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from .decode import decode_loop, n_heads_of
from .sampling import SamplingConfig
from .speculative import speculative_loop
from .stops import NO_STOPS, StopTexts


def bucket_length(n: int, min_bucket: int = 16) -> int:
    """Smallest power of two ≥ max(n, min_bucket): prompt lengths compile once per bucket."""
    return max(min_bucket, 1 << max(0, int(n) - 1).bit_length())


_TRACES = [0]  # incremented at trace time: one per compiled decode program


@partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "greedy",
        "top_k",
        "use_top_p",
        "n_heads",
        "speculative",
        "cache_dtype",
    ),
)
def _program(
    state,
    prompts,
    prompt_lens,
    keys,
    live,
    temperature,
    top_p,
    stops,
    end_ids,
    eos_id,
    *,
    graphdef,
    max_new_tokens,
    greedy,
    top_k,
    use_top_p,
    n_heads,
    speculative,
    cache_dtype,
):
    """The whole generation of one batch; compiled once per (model graph, batch, bucket, config,
    stop-table shapes) and shared by every Sampler of the same model graph."""
    _TRACES[0] += 1
    model = nnx.merge(graphdef, state)
    if speculative:
        return speculative_loop(
            model,
            prompts,
            prompt_lens,
            live,
            n_heads=n_heads,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            stops=stops,
            end_ids=end_ids,
            cache_dtype=cache_dtype,
        )
    out, steps = decode_loop(
        model,
        prompts,
        prompt_lens,
        keys,
        live,
        temperature,
        top_p,
        stops,
        end_ids,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        top_k=top_k,
        use_top_p=use_top_p,
        eos_id=eos_id,
        cache_dtype=cache_dtype,
    )
    return out, dict(forwards=steps + 1)


class Sampler:
    """Batched generation from token ids with a fixed batch size and bucketed prompt lengths.

    `sample(prompt_ids, n_samples, config)` returns, per prompt, `n_samples` token-id lists cut
    before the first EOS. `trace_count` counts compilations of the decode program (tests);
    `stats` accumulates generated tokens, decode seconds, forward calls and (speculative)
    drafted / accepted tokens.
    """

    def __init__(
        self,
        model,
        *,
        eos_id: int,
        batch_size: int = 8,
        min_bucket: int = 16,
        pad_id: int = 0,
        cache_dtype=None,
        speculative: bool = False,
        end_ids: Sequence[int] = (),
    ):
        model = nnx.view(model, deterministic=True, raise_if_not_found=False)
        self.graphdef, self.state = nnx.split(model)
        self.eos_id, self.pad_id, self.batch_size = int(eos_id), int(pad_id), int(batch_size)
        # further end-of-turn ids (e.g. generation_config's eos list): emitted as eos_id
        self.end_ids = np.array(
            sorted({int(i) for i in end_ids} - {self.eos_id}) or [self.eos_id], np.int32
        )
        self.min_bucket, self.cache_dtype = int(min_bucket), cache_dtype
        self.n_heads = n_heads_of(model)
        self.vocab_size = int(model.args.vocab_size)
        if speculative and self.n_heads < 2:
            raise ValueError(
                f"speculative decoding needs n_future_tokens ≥ 2, model has {self.n_heads}"
            )
        self.speculative = speculative
        self.trace_count = 0  # decode programs this sampler caused to be traced (compiled)
        self.stats: dict[str, float] = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = dict(tokens=0, seconds=0.0, forwards=0, drafted=0, accepted=0, calls=0)

    def generate_batch(
        self,
        prompts: np.ndarray,
        prompt_lens: np.ndarray,
        keys,
        live,
        config: SamplingConfig,
        stops: StopTexts | None = None,
    ):
        """One compiled call on a full batch `[batch_size, L]` -> tokens `[B, max_new]` (numpy)."""
        if self.speculative and not config.greedy:
            raise ValueError("speculative decoding is greedy only (set temperature=0)")
        t0, traces = time.perf_counter(), _TRACES[0]
        out, aux = _program(
            self.state,
            jnp.asarray(prompts, jnp.int32),
            jnp.asarray(prompt_lens, jnp.int32),
            keys,
            jnp.asarray(live),
            jnp.float32(config.temperature or 1.0),
            jnp.float32(config.top_p),
            (stops or NO_STOPS).arrays,
            jnp.asarray(self.end_ids),
            jnp.int32(self.eos_id),
            graphdef=self.graphdef,
            max_new_tokens=config.max_new_tokens,
            greedy=config.greedy,
            top_k=config.top_k,
            use_top_p=config.top_p < 1.0,
            n_heads=self.n_heads,
            speculative=self.speculative,
            cache_dtype=self.cache_dtype,
        )
        out = np.asarray(out)
        self.trace_count += _TRACES[0] - traces
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        for k, v in aux.items():
            self.stats[k] = self.stats.get(k, 0) + int(v)
        return out

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n_samples: int,
        config: SamplingConfig,
        *,
        seed: int = 0,
        stops: StopTexts | None = None,
        progress: str = "",
    ) -> list[list[list[int]]]:
        """Per prompt, `n_samples` completions (token ids before the first EOS).

        Greedy decoding generates one row per prompt and repeats it. Rows are sorted by prompt
        length, so a batch mixes few buckets; row (p, s) samples with key fold_in(fold_in(seed,
        p), s), independent of the batch it lands in. `progress`: a progress bar's label over the
        generated rows (process 0; "" = none).
        """
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty (needs at least BOS)")
        n_rows = 1 if config.greedy else n_samples
        rows = sorted(((len(p), i, s) for i, p in enumerate(prompt_ids) for s in range(n_rows)))
        base = jax.random.PRNGKey(seed)
        row_keys = jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))
        results: list[list[list[int]]] = [[None] * n_rows for _ in prompt_ids]
        bs = self.batch_size
        bar = tqdm(
            total=len(rows),
            desc=progress,
            unit="row",
            dynamic_ncols=True,
            disable=not progress or jax.process_index() != 0,
        )
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            n_live = len(chunk)
            chunk = chunk + [chunk[-1]] * (bs - n_live)  # pad the batch with a dead copy
            length = bucket_length(max(r[0] for r in chunk), self.min_bucket)
            prompts = np.full((bs, length), self.pad_id, np.int32)
            for j, (n, i, _) in enumerate(chunk):
                prompts[j, :n] = prompt_ids[i]
            lens = np.array([r[0] for r in chunk], np.int32)
            keys = row_keys(jnp.array([r[1] for r in chunk]), jnp.array([r[2] for r in chunk]))
            live = np.arange(bs) < n_live
            out = self.generate_batch(prompts, lens, keys, live, config, stops)
            for j, (_, i, s) in enumerate(chunk[:n_live]):
                row = out[j].tolist()
                row = row[: row.index(self.eos_id)] if self.eos_id in row else row
                results[i][s] = row
                self.stats["tokens"] += len(row)
            bar.update(n_live)
        bar.close()
        return [r * n_samples if config.greedy else r for r in results]


def compare_with_greedy(
    model,
    prompt_ids,
    *,
    eos_id: int,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    min_bucket: int = 16,
) -> dict:
    """Plain vs self-speculative greedy on the same prompts: equality, acceptance, tokens/s.

    Each sampler runs twice; the second (compiled) run is timed. tokens_per_step = tokens a row
    emits per decoding forward = 1 + (K − 1) · acceptance_rate (plain greedy: 1).
    """
    cfg = SamplingConfig(max_new_tokens=max_new_tokens)
    out, stats = {}, {}
    for name, spec in (("greedy", False), ("speculative", True)):
        s = Sampler(
            model, eos_id=eos_id, batch_size=batch_size, min_bucket=min_bucket, speculative=spec
        )
        s.sample(prompt_ids, 1, cfg)
        s.reset_stats()
        out[name] = s.sample(prompt_ids, 1, cfg)
        stats[name] = dict(s.stats)
    g, sp = stats["greedy"], stats["speculative"]
    acceptance = sp["accepted"] / max(sp["drafted"], 1)
    return {
        "identical": out["greedy"] == out["speculative"],
        "tokens": g["tokens"],
        "acceptance_rate": acceptance,
        "tokens_per_step": 1 + (n_heads_of(model) - 1) * acceptance,
        "greedy_tokens_per_s": g["tokens"] / max(g["seconds"], 1e-9),
        "speculative_tokens_per_s": sp["tokens"] / max(sp["seconds"], 1e-9),
        "greedy_forwards": g["forwards"],
        "speculative_forwards": sp["forwards"],
    }
