"""Evaluation pipeline end to end on a tiny random policy: the CLI (model dir, temperature sweep
on the validation split, files + MLflow), training-checkpoint restores (full and LoRA + base)
and self-speculative decoding through the pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax.models import ModelArgs, MTPTransformer, serialization

ROOT = Path(__file__).resolve().parents[2]
ARGS = dict(
    dim=32, n_layers=3, n_heads=2, n_kv_heads=2, multiple_of=16, n_future_tokens=2, max_seq_len=256
)
PROBLEMS = [
    ("add_one", "returns x plus 1", ["assert add_one(1) == 2", "assert add_one(-1) == 0"]),
    ("double", "returns 2 times x", ["assert double(2) == 4"]),
    ("neg", "returns -x", ["assert neg(3) == -3"]),
]


def write_split(data_dir: Path, split: str):
    d = data_dir / "synthetic" / "processed"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{split}_eval.jsonl", "w") as f:
        for i, (name, doc, tests) in enumerate(PROBLEMS):
            f.write(
                json.dumps(
                    {
                        "task_id": f"{split}_{i}",
                        "input": "",
                        "instruction": f"Write a Python function `{name}(x)` that {doc}.",
                        "metadata": {
                            "source": "synthetic",
                            "entry_point": name,
                            "test_list": tests,
                            "test_setup_code": "",
                            "has_tests": True,
                        },
                    }
                )
                + "\n"
            )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """data dir (valid + test), a micro tokenizer, an mtp model dir with the tokenizer inside."""
    from wmtp_jax.data.tokenizer import train_micro_tokenizer

    root = tmp_path_factory.mktemp("eval")
    data = root / "datasets"
    for split in ("valid", "test"):
        write_split(data, split)
    texts = [f"def {n}(x):\n    return x + 1\n### Response:\n{d}" for n, d, _ in PROBLEMS] * 5
    tok = train_micro_tokenizer(texts, root / "tok", vocab_size=300)
    args = ModelArgs(vocab_size=len(tok), **ARGS)
    model = MTPTransformer(args, rngs=nnx.Rngs(0))
    files = sorted(p for p in (root / "tok").iterdir() if p.is_file())
    serialization.save_model(root / "model", model, kind="mtp", args=args, tokenizer=files)
    return dict(
        root=root, data=data, model_dir=root / "model", args=args, model=model, tok_files=files
    )


def eval_config(world, **overrides):
    from wmtp_jax.configs import evaluation

    c = evaluation.get_config("micro")
    c.data_dir = str(world["data"])
    c.mlflow.tracking_uri = f"sqlite:///{world['root']}/mlflow.db"
    c.n_samples, c.max_new_tokens, c.batch_size, c.min_bucket = 2, 6, 4, 64
    c.workers = 2
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def test_cli_model_dir_with_temperature_sweep(world):
    out = world["root"] / "out_cli"
    cmd = [
        sys.executable,
        "-m",
        "wmtp_jax.main",
        "--config=configs/evaluation.py",
        f"--config.checkpoint={world['model_dir']}",
        f"--config.data_dir={world['data']}",
        "--config.benchmark=synthetic",
        "--config.n_samples=2",
        "--config.k=(1,2,10)",
        "--config.temperature=(0.0,0.8)",
        "--config.max_new_tokens=6",
        "--config.batch_size=4",
        "--config.min_bucket=64",
        "--config.workers=2",
        f"--config.output_dir={out}",
        f"--config.mlflow.tracking_uri=sqlite:///{world['root']}/mlflow.db",
    ]
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    results = [json.loads(line) for line in open(out / "results.jsonl")]
    assert set(summary["temperature_sweep"]) == {"0.0", "0.8"}
    t = summary["temperature"]
    n = 1 if t == 0.0 else 2  # greedy: one sample per problem
    assert summary["n_problems"] == 3 and len(samples) == len(results) == 3 * n
    assert {s["task_id"] for s in samples} == {"test_0", "test_1", "test_2"}  # test split
    assert all(set(r) >= {"task_id", "completion", "passed", "result"} for r in results)
    assert "pass@1" in summary and "pass@10" not in summary
    assert summary["pass@1"] == pytest.approx(np.mean([r["passed"] for r in results]))
    assert summary["generation"]["tokens"] > 0
    assert summary["sandbox"]["policy"] == "required" and summary["sandbox"]["isolated"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{world['root']}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["pass_at_1"] == pytest.approx(summary["pass@1"])
    assert "gen/tokens_per_s" in run.data.metrics
    assert run.data.params["benchmark"] == "synthetic"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "samples.jsonl", "results.jsonl"} <= arts


def save_training_checkpoint(world, run_dir: Path, model, *, lora: bool, save_lora_only: bool):
    """A checkpoint laid out as wmtp_jax.train.loop writes it (state/meta/config items)."""
    from wmtp_jax.train.checkpoint import Checkpointer

    trainable = nnx.LoRAParam if lora else nnx.Param
    _, params, fixed, other = nnx.split(model, trainable, nnx.Param, ...)
    state = {
        "step": np.int32(7),
        "params": params,
        "opt_state": {},
        "other": other,
        "extra": {},
        "rng": np.zeros(2, np.uint32),
    }
    if lora and not save_lora_only:
        state["frozen_params"] = fixed
    config = {
        "pipeline": "baseline",
        "models": {"policy": {"path": str(world["model_dir"]), "tokenizer_path": ""}},
        "training": {
            "use_lora": lora,
            "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["wq", "wv", "w2"]},
        },
    }
    ck = Checkpointer(run_dir, async_=False)
    ck.save(7, state, {"status": "final"}, config)
    ck.wait()
    ck.close()


@pytest.mark.parametrize("lora,save_lora_only", [(False, False), (True, True), (True, False)])
def test_training_checkpoint_restores_the_trained_policy(world, tmp_path, lora, save_lora_only):
    from wmtp_jax.models.lora import LoRAConfig
    from wmtp_jax.pipelines.restore import restore_training_checkpoint

    cfg = LoRAConfig(rank=4, alpha=8.0, targets=("wq", "wv", "w2")) if lora else None
    trained = MTPTransformer(world["args"], rngs=nnx.Rngs(1), lora=cfg)
    nnx.update(trained, nnx.state(world["model"], nnx.Param))  # base weights
    if lora:  # a trained LoRA: nonzero B
        st = nnx.state(trained, nnx.LoRAParam)
        nnx.update(trained, jax.tree.map(lambda a: a + 0.05, st))
    else:
        st = nnx.state(trained, nnx.Param)
        nnx.update(trained, jax.tree.map(lambda a: a * 1.01, st))
    save_training_checkpoint(world, tmp_path, trained, lora=lora, save_lora_only=save_lora_only)
    restored, _, base = restore_training_checkpoint(tmp_path / "checkpoints" / "7")
    assert base == str(world["model_dir"]) and restored.lora is None
    tokens = jnp.asarray(np.arange(10, dtype=np.int32)[None] % world["args"].vocab_size)
    np.testing.assert_allclose(
        np.asarray(restored(tokens)), np.asarray(trained(tokens)), atol=1e-4, rtol=1e-4
    )


def test_pipeline_speculative_on_a_training_run(world, tmp_path):
    from wmtp_jax.pipelines import evaluation

    save_training_checkpoint(world, tmp_path, world["model"], lora=False, save_lora_only=False)
    greedy = evaluation.run(
        eval_config(
            world, **{"checkpoint": str(tmp_path), "temperature": 0.0, "mlflow.experiment": ""}
        )
    )
    spec = evaluation.run(
        eval_config(
            world,
            **{
                "checkpoint": str(tmp_path),
                "temperature": 0.0,
                "speculative": True,
                "output_dir": str(tmp_path / "spec"),
            },
        )
    )
    assert greedy["output_dir"] == str(tmp_path / "eval" / "synthetic-test")
    assert greedy["checkpoint"]["kind"] == "training_checkpoint"
    assert greedy["checkpoint"]["step"] == 7
    read = lambda d: [json.loads(x) for x in open(Path(d) / "samples.jsonl")]
    assert read(greedy["output_dir"]) == read(spec["output_dir"])  # identical completions
    assert 0.0 <= spec["generation"]["acceptance_rate"] <= 1.0
    assert spec["generation"]["tokens"] == greedy["generation"]["tokens"]


def test_refuses_without_isolation_before_any_work(tmp_path):
    """`sandbox: required` (the default) with no bwrap: one error line, non-zero exit, before
    the checkpoint is even looked at."""
    cmd = [
        sys.executable,
        "-m",
        "wmtp_jax.main",
        "--config=configs/evaluation.py",
        f"--config.checkpoint={tmp_path / 'nonexistent'}",
        "--config.benchmark=synthetic",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PATH=str(tmp_path))  # no bwrap on PATH
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]] and len(errors) == 1, proc.stderr
    assert "sandbox isolation unavailable" in errors[0] and "sandbox=" in errors[0]


def test_sandbox_config_key():
    from wmtp_jax.configs import evaluation

    c = evaluation.get_config("micro")
    assert c.sandbox == "required"
    c.sandbox = "off"
    with pytest.raises(ValueError, match=r"sandbox='off' is invalid; one of \('required'"):
        evaluation.validate(c)


def test_llama_model_dir_evaluates_and_critic_is_refused(world, tmp_path):
    """A plain next-token `llama` model dir (what hf-to-flax writes) scores like a policy; a
    critic dir is refused with one line naming its kind."""
    from wmtp_jax.models import Llama
    from wmtp_jax.pipelines import evaluation

    args = world["args"].replace(n_future_tokens=1, tie_embeddings=True)
    serialization.save_model(
        tmp_path / "llama",
        Llama(args, rngs=nnx.Rngs(2)),
        kind="llama",
        args=args,
        tokenizer=world["tok_files"],
    )
    s = evaluation.run(
        eval_config(
            world,
            **{
                "checkpoint": str(tmp_path / "llama"),
                "temperature": 0.0,
                "mlflow.experiment": "",
                "output_dir": str(tmp_path / "out"),
            },
        )
    )
    assert s["checkpoint"]["model_kind"] == "llama" and s["n_problems"] == 3
    g = s["generation"]
    assert 0 < g["tokens_to_stop"] <= g["tokens"] <= 1.2 * g["tokens_to_stop"]
    from wmtp_jax.models import ValueModel

    serialization.save_model(
        tmp_path / "critic", ValueModel(args, rngs=nnx.Rngs(0)), kind="critic", args=args
    )
    with pytest.raises(ValueError, match="kind 'critic' cannot generate"):
        evaluation.run(eval_config(world, **{"checkpoint": str(tmp_path / "critic")}))
