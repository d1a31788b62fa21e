"""`python -m wmtp_jax.compile --config=configs/<pipeline>.py[:variant] --topology=<name>
[--out FILE] [--config.key=value ...]`: compile a pipeline's train step and its decoding path
for an accelerator topology on this (CPU-only) machine, and report per device memory, FLOPs,
collectives and a roofline estimate (wmtp_jax.compile.roofline).

Exit status: 0 the step fits; 3 it does not (one line: `needs 41.2 GiB per device, v5e has 16
GiB`); 2 a bad topology name or config (one `error:` line).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from wmtp_jax import main as main_lib
from wmtp_jax.bench import flops as flops_lib
from wmtp_jax.compile import aot, roofline, topology
from wmtp_jax.compile import task as task_lib
from wmtp_jax.configs.common import ConfigError, validate_config
from wmtp_jax.models.lora import HF_TO_META_TARGET
from wmtp_jax.train import mesh as mesh_lib

_TOPOLOGY = flags.DEFINE_string("topology", None, "v5e:2x2, v5e-16, v5p-64, v4-8, v6e-8, ...")
_OUT = flags.DEFINE_string("out", "", "write the report as JSON to this file")
_POLICY_PRESET = flags.DEFINE_string(
    "policy_preset", "", "architecture preset of the trained model (default: its model dir)"
)
_FROZEN_PRESET = flags.DEFINE_string(
    "frozen_preset", "", "architecture preset of the frozen critic / reference"
)
_POLICY_ARGS = flags.DEFINE_list(
    "policy_args", [], "ModelArgs overrides of the trained model: n_future_tokens=2,n_layers=16"
)
_DECODE = flags.DEFINE_bool("decode", True, "also compile prefill + one KV-cache decode step")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 0, "decode rows (0 = training.batch_size)")


def _fail(msg: str, code: int = 2):
    print(f"error: {msg}" if code == 2 else msg, file=sys.stderr)
    sys.exit(code)


def _overrides(items) -> dict:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            _fail(f"--policy_args: {item!r} is not key=value")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def tokens_per_step(config) -> int:
    t = config.training
    rows = int(config.data.get("pack_rows", 0) or 0) if config.data.get("packing") else 0
    n = int(t.gradient_accumulation_steps) * (rows or int(t.batch_size))
    pairs = config.pipeline == "critic" or (
        config.pipeline == "verifiable" and bool(config.data.get("use_negatives", False))
    )
    return n * int(config.dataset.max_length) * (2 if pairs else 1)


def analytic_train_flops(config, info: dict) -> float:
    """Model FLOPs of one train step, all devices (wmtp_jax.bench.flops)."""
    trained = next(v for v in info.values() if v["trained"])
    frozen = next((v for v in info.values() if not v["trained"]), None)
    t = config.training
    targets = tuple(HF_TO_META_TARGET.get(x, x) for x in t.lora.target_modules)
    head = str(config.training.get("value_head", {}).get("type", "mlp"))
    if frozen is not None and frozen["value_head"]:
        head = frozen["value_head"].get("type", head)
    per_token = flops_lib.train_flops_per_token(
        str(config.pipeline),
        trained["args"],
        int(config.dataset.max_length),
        lora_rank=int(t.lora.rank) if t.use_lora else 0,
        lora_targets=targets,
        critic_args=frozen["args"] if frozen else None,
        value_head=head,
    )
    return per_token["total"] * tokens_per_step(config)


def _setup(config, topo_name, policy_preset, frozen_preset, policy_args):
    """Validated config -> (topology, mesh, abstract task, model info); `error:` exit 2."""
    try:
        validate_config(config)
        topo = topology.get(topo_name)
        mesh = aot.config_mesh(config, topo)
        mesh_lib.check_batch_size(int(config.training.batch_size), mesh)
        task, info = task_lib.abstract_task(
            config,
            mesh,
            policy_preset=policy_preset or None,
            frozen_preset=frozen_preset or None,
            policy_args=policy_args or {},
        )
    except (ValueError, ConfigError) as e:
        _fail(str(e))
    return topo, mesh, task, info


def _describe(config, topo, mesh, info) -> dict:
    """Print the topology, models and settings; the report's header sections."""
    print(topology.describe(topo))
    attention = aot.attention_choice(config, info, topo.chip.platform)
    for name, v in info.items():
        a = v["args"]
        print(
            f"{name}: {v['source']}; dim {a.dim}, {a.n_layers} layers, vocab {a.vocab_size}, "
            f"{'trained' if v['trained'] else 'frozen'}, {a.dtype} compute, {a.param_dtype} "
            f"params, remat {a.remat}"
        )
    print(
        f"{config.pipeline}: {config.runtime.sharding}, mesh {dict(mesh.shape)}, attention "
        f"{config.runtime.attention} -> {attention}"
    )
    return {
        "pipeline": str(config.pipeline),
        "topology": {
            "name": topo.name,
            "chip": topo.chip.name,
            "grid": list(topo.grid),
            "devices": topo.n_devices,
        },
        "settings": {
            "sharding": str(config.runtime.sharding),
            "dtype": str(config.runtime.dtype),
            "remat": str(config.runtime.remat),
            "attention": attention,
            "mesh": dict(mesh.shape),
            "batch_size": int(config.training.batch_size),
            "gradient_accumulation_steps": int(config.training.gradient_accumulation_steps),
            "seq_len": int(config.dataset.max_length),
            "use_lora": bool(config.training.use_lora),
        },
        "models": {
            k: {"source": v["source"], "trained": v["trained"], "args": v["args"].to_dict()}
            for k, v in info.items()
        },
    }


def _compile_sections(config, topo, mesh, task, info, result, decode, decode_batch) -> list:
    """Compile the train step (and prefill + decode step) into ``result``; the does-not-fit
    reasons (empty when all compiled)."""
    n = topo.n_devices
    try:
        prog, extra = aot.train_program(config, topo, mesh, task)
        flops = analytic_train_flops(config, info)
        extra["tokens_per_step"] = tokens_per_step(config)
        result["train"] = roofline.section(prog, topo, flops / n, extra)
        print(roofline.render("train", result["train"], topo))
        if decode and config.pipeline != "critic":
            b = decode_batch or int(config.training.batch_size)
            seq = int(config.dataset.max_length)
            pre, dec, meta = aot.decode_programs(config, topo, mesh, info, b, seq // 2, seq)
            args = next(v for v in info.values() if v["trained"])["args"]
            df = flops_lib.decode_flops(args, b, seq // 2, seq)
            result["decode"] = roofline.section(dec, topo, df["step"] / n, meta)
            result["decode"]["prefill"] = roofline.section(pre, topo, df["prefill"] / n, meta)
            print(roofline.render("prefill", result["decode"]["prefill"], topo))
            print(roofline.render("decode step", result["decode"], topo))
        else:
            result["decode"] = {"skipped": "the critic pipeline trains a value model (no decoding)"}
    except aot.DoesNotFit as e:
        result.setdefault("train", {"fits": False, "reason": str(e)})
        return [str(e)]
    return []


def _memory_reasons(result, topo) -> list:
    """One `needs X per device, chip has Y GiB` line per compiled program that does not fit."""
    reasons = []
    for key in ("train", "decode"):
        sec = result.get(key, {})
        progs = [sec, sec.get("prefill")] if "memory" in sec else []
        for p in filter(None, progs):
            if not p["fits"]:
                m = p["memory"]
                reasons.append(
                    f"needs {aot.gib(m['per_device_bytes'])} per device, {topo.chip.name} has "
                    f"{m['device_capacity_bytes'] / 2**30:g} GiB"
                )
    return reasons


def run(
    config,
    topo_name: str,
    *,
    out: str = "",
    policy_preset="",
    frozen_preset="",
    policy_args=None,
    decode=True,
    decode_batch=0,
) -> int:
    """Compile, print and write the report; the exit status."""
    topo, mesh, task, info = _setup(config, topo_name, policy_preset, frozen_preset, policy_args)
    result = _describe(config, topo, mesh, info)
    reasons = _compile_sections(config, topo, mesh, task, info, result, decode, decode_batch)
    reasons += _memory_reasons(result, topo)
    code = 3 if reasons else 0
    result["fits"] = code == 0
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"report: {out}")
    if code == 3:
        print(reasons[0], file=sys.stderr)
    return code


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    try:
        config = main_lib._CONFIG.value
    except Exception as e:  # noqa: BLE001 -- ml_collections reports a failed load lazily
        _fail(f"--config: {main_lib._last_line(e)}")
    if config is None:
        _fail("--config=configs/<pipeline>.py[:variant] is required")
    if not _TOPOLOGY.value:
        _fail("--topology is required (e.g. v5e:2x2, v5p-64, v4-8, v6e-8)")
    sys.exit(
        run(
            config,
            _TOPOLOGY.value,
            out=_OUT.value,
            policy_preset=_POLICY_PRESET.value,
            frozen_preset=_FROZEN_PRESET.value,
            policy_args=_overrides(_POLICY_ARGS.value),
            decode=_DECODE.value,
            decode_batch=_DECODE_BATCH.value,
        )
    )


def cli():
    app.run(main, flags_parser=main_lib._parse_flags)


if __name__ == "__main__":
    cli()
