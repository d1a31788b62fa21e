"""One console line per benchmark row (train, decode, attention, compare-torch, or an error)."""

from __future__ import annotations


def summary_line(row: dict) -> str:
    """The row's console line, by its `kind`."""
    if "error" in row:
        c = row.get("config", {})
        return f"[error] {c.get('pipeline', row.get('mode'))}: {row['error'][:300]}"
    line = {
        "attention": _attention,
        "compare_torch": _compare_torch,
        "decode": _decode,
    }.get(row["kind"], _train)
    return line(row)


def _attention(row: dict) -> str:
    c, mem = row["config"], (row.get("memory_analysis") or {}).get("estimate")
    rss = row.get("torch_peak_bytes")
    rss = row.get("torch_peak_rss_bytes") if rss is None else rss
    done = "compiled" if "skipped" not in row else f"skipped ({row['skipped']})"
    return (
        f"attention {row['implementation']:10s} B={c['batch']} S={c['seq']} "
        f"H={c['n_heads']}/{c['n_kv_heads']} hd={c['head_dim']} {c['dtype']}: fwd+bwd "
        + (f"{row['fwd_bwd_ms']:.2f} ms" if "fwd_bwd_ms" in row else done)
        + (
            f" (x{row['ratio_vs_torch_sdpa']:.2f} torch SDPA)"
            if "ratio_vs_torch_sdpa" in row
            else ""
        )
        + (f", mem {mem / 2**20:.1f} MiB" if mem else "")
        + (f", peak {rss / 2**20:.1f} MiB" if rss is not None else "")
        + (f" ({100 * row['memory_vs_xla']:.1f}% of xla)" if "memory_vs_xla" in row else "")
        + f", load {row['loadavg_during']}"
    )


def _compare_torch(row: dict) -> str:
    c = row["config"]
    return (
        f"compare-torch D={c['dim']} L={c['n_layers']} K={c['n_future']} V={c['vocab']} "
        f"B={c['batch']} S={c['seq']} attention={c['attention']}"
        f"->{row['attention_resolved']}: wmtp_jax {row['jax_step_ms']:.1f} ms, torch "
        f"{row['torch_step_ms']:.1f} ms, ratio {row['ratio_jax_over_torch']:.3f} "
        f"(first losses {row['first_loss_jax']:.5f} / {row['first_loss_torch']:.5f}), "
        f"load {row['loadavg_during']}"
    )


def _decode(row: dict) -> str:
    c, acc = row.get("config", {}), row.get("acceptance_rate")
    return (
        f"decode {row['mode']:11s} B={c['batch']} new={c['max_new_tokens']}: "
        f"{row['tokens_per_s']:.1f} tok/s, first call {row['first_call_s']:.1f} s"
        + (
            f", acceptance {acc:.3f}, x{row['speedup_vs_greedy']:.2f} vs greedy"
            if acc is not None
            else ""
        )
        + (
            f"; after prefill {row['decode_phase_tokens_per_s']:.1f} tok/s"
            + (f" (x{row['decode_phase_speedup_vs_greedy']:.2f})" if acc is not None else "")
            if "decode_phase_tokens_per_s" in row
            else ""
        )
    )


def _train(row: dict) -> str:
    c = row.get("config", {})
    mem = row.get("memory_analysis", {}).get("estimate")
    layers = (
        (c["critic_layers"] or max(1, c["n_layers"] // 2))
        if c["pipeline"] == "critic"
        else c["n_layers"]
    )
    s = (
        f"train {c['pipeline']:10s} L={layers} B={c['batch']} S={c['seq']} {c['dtype']} "
        f"remat={c['remat']} loss={c['loss']} donate={c['donate']} heads={c['heads']} "
        f"attention={c.get('attention', 'auto')}->{row.get('attention_resolved')}: compile "
        f"{row['compile_total_s']:.1f} s "
        f"(CPU {row['lower_cpu_s'] + row['compile_cpu_s']:.1f} s), "
        f"mem {mem / 2**20 if mem else float('nan'):.0f} MiB"
    )
    if row.get("step_time_s"):
        mfu = row.get("mfu")
        s += (
            f", step {row['step_time_s'] * 1e3:.1f} ms (CPU {row['step_cpu_s'] * 1e3:.0f} ms), "
            f"{row['tokens_per_s']:.0f} tok/s"
            + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
        )
    return s
