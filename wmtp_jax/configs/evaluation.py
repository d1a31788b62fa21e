"""Evaluation: restore a policy, generate for a benchmark, score in the sandbox, report pass@k.

    python -m wmtp_jax.main --config=configs/evaluation.py \
        --config.checkpoint=storage/checkpoints/baseline/baseline-micro --config.benchmark=synthetic
    python -m wmtp_jax.main --config=configs/evaluation.py:7b \
        --config.checkpoint=storage/checkpoints/verifiable/verifiable-7b \
        --config.benchmark=humaneval

`checkpoint`: a model directory (`model_config.json`: an `mtp` policy or a plain `llama` model
with an LM head, e.g. a converted public checkpoint), a training run directory
(its latest checkpoint; `best/` with `use_best=True`), or one step directory
(`<run>/checkpoints/<step>`). LoRA checkpoints rebuild `base_model` (default: the run's
`models.policy.path`) with the saved LoRA config and merge the factors before decoding.
`temperature` may be a list: each value is scored on `validation_split` and the best pass@1 is
used on `split` (never tuned on the test problems).
"""

import ml_collections

from wmtp_jax.configs import common
from wmtp_jax.eval.prompts import PROMPT_FORMATS

BENCHMARKS = ("humaneval", "mbpp", "codecontests", "gsm8k", "synthetic")
SANDBOX_POLICIES = ("required", "best_effort", "none")


def get_config(variant: str = "micro"):
    common.check_variant(variant)
    cpu = variant != "7b"  # micro and small run on a CPU
    small = variant == "small"  # a few HumanEval problems, greedy, with the instruct model's chat
    return common.build(
        "evaluation",
        variant,
        "benchmark evaluation (pass@k)",
        {
            # Evaluation restores rather than writes checkpoints: `checkpoint` is the path to
            # restore (the training pipelines' `checkpoint.*` section does not apply).
            "checkpoint": "",
            "use_best": False,
            # a float, or a list swept on validation_split
            "temperature": ml_collections.FieldReference(0.0 if small else 0.2, field_type=object),
            "base_model": "",
            "tokenizer_path": "",  # "" = <model dir>/tokenizer
            "benchmark": "humaneval" if small or not cpu else "synthetic",
            # auto = the benchmark's own prompt (HumanEval plain, the others Alpaca) | plain |
            # alpaca | chat (the tokenizer's chat template; code extracted from the reply)
            "prompt_format": "chat" if small else "auto",
            "data_dir": "storage/datasets",
            "split": "test",
            "validation_split": "valid",
            "validation_limit": 0,  # problems of the validation split used by the sweep (0 = all)
            "limit": 5 if small else 0,  # first N problems (0 = the whole benchmark)
            "n_samples": {"micro": 10, "small": 1, "7b": 20}[variant],
            "k": {"micro": (1, 5, 10), "small": (1,), "7b": (1, 5, 10, 20)}[variant],
            "top_p": 0.95,
            "top_k": 0,
            "max_new_tokens": {"micro": 96, "small": 256, "7b": 512}[variant],
            "batch_size": 8 if small else 32,
            "min_bucket": 16,
            "speculative": False,  # self-speculative MTP decoding (greedy only)
            "dtype": "float32" if cpu else "bfloat16",  # parameter + compute dtype for decoding
            "workers": 0,  # sandbox worker processes (0 = CPU count)
            # required: refuse to run generated code without full isolation (bubblewrap);
            # best_effort / none: explicit opt-outs, recorded in summary.json
            "sandbox": "required",
            "timeout": 5.0,  # seconds per program (per test for codecontests)
            "max_tests": 10,  # codecontests tests per problem (0 = all)
            "sample_seed": 0,
        },
        output_dir="auto",  # auto = <run dir or model dir>/eval/<benchmark>-<split>
    )


def validate(c):
    """Value checks naming the key; `wmtp_jax.pipelines.evaluation.run` repeats them after the
    command-line overrides (and requires checkpoint)."""
    ch = common._check
    ch(c.benchmark in BENCHMARKS, "benchmark", c.benchmark, f"one of {BENCHMARKS}")
    ch(
        c.prompt_format in PROMPT_FORMATS,
        "prompt_format",
        c.prompt_format,
        f"one of {PROMPT_FORMATS}",
    )
    temps = c.temperature if isinstance(c.temperature, (tuple, list)) else (c.temperature,)
    ch(
        len(temps) > 0 and all(common.is_number(t) and t >= 0 for t in temps),
        "temperature",
        c.temperature,
        "need ≥ 0 (0 = greedy), or a non-empty list of such values",
    )
    for key in ("n_samples", "max_new_tokens", "batch_size", "min_bucket"):
        common.check_int(c, key, 1)
    for key in ("top_k", "limit", "validation_limit", "workers", "max_tests"):
        common.check_int(c, key, 0)
    common.check_seed(c, "sample_seed")
    common.check_number(c, "timeout", 0, lo_open=True)
    common.check_number(c, "top_p", 0, 1, lo_open=True)
    for key in ("checkpoint", "base_model", "tokenizer_path", "data_dir", "split"):
        ch(isinstance(c[key], str), key, c[key], "need a path or name")
    ch(
        len(c.k) > 0 and all(common.is_int(k) and 1 <= k for k in c.k),
        "k",
        c.k,
        "need a list of integers k ≥ 1",
    )
    ch(c.sandbox in SANDBOX_POLICIES, "sandbox", c.sandbox, f"one of {SANDBOX_POLICIES}")
    ch(
        c.split != c.validation_split or len(temps) == 1,
        "validation_split",
        c.validation_split,
        f"a temperature sweep must not tune on the evaluated split {c.split!r}",
    )
    ch(
        not c.speculative or all(float(t) == 0 for t in temps),
        "speculative",
        c.speculative,
        "self-speculative decoding is greedy only: set temperature=0",
    )
