"""wmtp_jax.bench.attention: a point that would not fit in memory is skipped with the memory it
needs (never run), and torch's CPU peak is measured in a subprocess."""

import pytest

from wmtp_jax.bench import attention as B

CASE = B.AttentionCase(batch=2, seq=40, n_heads=4, n_kv_heads=2, head_dim=8)


def test_a_program_over_the_memory_budget_is_skipped_not_run(monkeypatch):
    monkeypatch.setattr(B, "available_bytes", lambda: 1000)
    rows = B.run_attention_sweep([CASE], ["xla", "blockwise"], repeats=1, torch_ref=False)
    assert [r["implementation"] for r in rows] == ["xla", "blockwise"]
    for r in rows:
        est = r["memory_analysis"]["estimate"]
        assert est > 700 and "fwd_bwd_ms" not in r and "error" not in r
        assert r["skipped"] == f"needs {est / 2**30:.2f} GiB, 0.00 GiB available"
    assert rows[1]["memory_vs_xla"] == pytest.approx(
        rows[1]["memory_analysis"]["estimate"] / rows[0]["memory_analysis"]["estimate"]
    )


def test_within_budget_runs_and_compile_only_never_skips(monkeypatch):
    rows = B.run_attention_sweep([CASE], ["blockwise"], repeats=2, warmup=0, torch_ref=False)
    assert len(rows[0]["fwd_bwd_ms_all"]) == 2 and "skipped" not in rows[0]
    monkeypatch.setattr(B, "available_bytes", lambda: 1000)
    rows = B.run_attention_sweep([CASE], ["blockwise"], compile_only=True)
    assert "skipped" not in rows[0] and rows[0]["memory_analysis"]["estimate"] > 0


def test_available_bytes_is_the_hosts_memavailable():
    with open("/proc/meminfo") as f:
        want = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    assert abs(B.available_bytes() - want) < 2**30


def test_torch_cpu_peak_rss_comes_from_a_subprocess():
    pytest.importorskip("torch")
    # the subprocess reports one non-negative integer (the growth over its inputs)
    case = B.AttentionCase(batch=1, seq=64, n_heads=2, n_kv_heads=2, head_dim=8)
    peak = B.torch_cpu_peak_rss(case, 1)
    assert isinstance(peak, int) and peak >= 0
