"""The WMTP study: arms × seeds, trained alike and evaluated on held-out problems.

    python -m wmtp_jax.main --config=configs/experiment.py               # micro: 3 arms × 3 seeds
    python -m wmtp_jax.main --config=configs/experiment.py:smoke         # 2 arms, 1 seed, tiny
    python -m wmtp_jax.main --config=configs/experiment.py --config.arms=rho1 --config.seeds=2 \
        --config.output_dir=storage/experiments/mystudy                  # one cell of a grid

Per seed: the prerequisites once (critic; the rho1 reference when rho1 is an arm), the critic
credit, then every arm from the same initial policy, data order, steps and evaluation settings
(only the token weighting differs), each evaluated on the test split: greedy pass@1 and sampled
pass@1 / pass@k at the temperature that is best on the validation split. `train.<role>` defaults
are the pipelines' own micro configs. See docs/study.md.
"""

import ml_collections

from wmtp_jax.configs import baseline, common, critic, ref_tuning

# critic objectives: name -> training.value_loss overrides of the critic's micro config
# (ranking = the pipeline's default; lambda_mse = the original's production critic_mlp: λ-return
# regression with MSE at constant λ = 1, i.e. Monte Carlo; divergence = ops.first_divergence_loss;
# prefix_mc = ops.prefix_value_loss on data.spans.prefix_success targets)
CRITICS = {
    "ranking": {},
    "lambda_mse": {
        "type": "lambda_return",
        "loss_fn": "mse",
        "lambda_schedule.type": "constant",
        "lambda_schedule.value": 1.0,
    },
    "divergence": {"type": "first_divergence", "loss_fn": "mse"},
    "prefix_mc": {"type": "prefix_mc", "loss_fn": "mse"},
}
# arm -> (pipeline, critic objective or None, config overrides): every arm is a weighting of the
# same policy CE; `verifiable` uses the ranking critic, `verifiable_<critic>` the others
ARM_SPECS = {
    "baseline": ("baseline", None, {}),
    "ntp": ("baseline", None, {"training.loss_heads": 1}),
    "verifiable": ("verifiable", "ranking", {}),
    **{f"verifiable_{k}": ("verifiable", k, {}) for k in CRITICS if k != "ranking"},
    "random_weights": ("verifiable", "control", {"weighting.control": "permute"}),
    "oracle": ("verifiable", "control", {"weighting.control": "oracle"}),
    "verifiable_negatives": ("verifiable", "ranking", {"data.use_negatives": True}),
    "rho1": ("rho1", None, {}),
}
ARMS = tuple(ARM_SPECS)
VARIANTS = ("micro", "smoke")


def _train_entry(pipeline_config) -> ml_collections.ConfigDict:
    """The steps / batch / data sizes of a pipeline's micro config (overridable here)."""
    c = pipeline_config.get_config("micro")
    t, s = c.training, c.data_sampling
    return ml_collections.ConfigDict(
        {
            "max_steps": t.max_steps,
            "batch_size": t.batch_size,
            "eval_every_steps": t.eval_every_steps,
            "n_samples": s.n_samples,
            "val_n_samples": s.val_n_samples,
        }
    )


def get_config(variant: str = "micro") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; valid: {VARIANTS}")
    c = common.get_config("experiment", "micro")
    smoke = variant == "smoke"
    with c.unlocked():
        c.variant = variant
        c.output_dir = f"storage/experiments/experiment-{variant}"
        c.experiment.name = f"experiment-{variant}"
        c.experiment.description = "WMTP study: baseline vs verifiable vs rho1"
        c.experiment.tags = ("experiment", variant)
        # the cells this job runs (comma-separated); the report covers study_arms × study_seeds
        # plus these, so separate jobs can fill one output_dir
        c.arms = "baseline,verifiable" if smoke else "baseline,verifiable,rho1"
        c.seeds = "0" if smoke else "0,1,2"
        c.study_arms = c.arms
        c.study_seeds = c.seeds
        # critic objectives whose credit is measured per seed (plus those the arms need)
        c.critics = "ranking" if smoke else ",".join(CRITICS)
        # the critic whose weights random_weights permutes and whose mean weight oracle keeps
        c.control_critic = "ranking"
        # oracle: weight ratio critical : other tokens (chosen on validation, docs/study.md)
        c.oracle_ratio = 4.0
        # when set: every finished cell's and credit's light files (no checkpoints) are copied
        # there, a study dir `python -m wmtp_jax.study.aggregate` rebuilds the report from
        c.publish_dir = ""
        b = baseline.get_config("micro")
        c.dataset = ml_collections.ConfigDict(
            {"path": b.dataset.path, "max_length": b.dataset.max_length}
        )
        # per role: the pipeline's micro defaults (policy = every arm, so they match)
        c.train = ml_collections.ConfigDict(
            {
                "policy": _train_entry(baseline),
                "critic": _train_entry(critic),
                "reference": _train_entry(ref_tuning),
            }
        )
        e = c.eval = ml_collections.ConfigDict()
        e.limit = 0  # test problems (0 = all)
        # validation problems for the temperature choice (0 = all; the sweep decodes
        # len(temperatures) × validation_limit × n_samples sequences per cell)
        e.validation_limit = 20
        e.temperatures = (0.2, 0.6, 1.0)  # sampled decoding: the best on validation is used
        e.n_samples = 10
        e.k = (1, 5)
        e.top_p = 0.95
        e.max_new_tokens = 96
        e.batch_size = 32
        e.workers = 0  # sandbox processes (0 = CPU count)
        e.timeout = 5.0
        e.sample_seed = 0
        c.credit = ml_collections.ConfigDict(
            {"split": "test", "max_solutions": 0, "batch_size": 16}
        )
        c.bootstrap = ml_collections.ConfigDict({"n_resamples": 2000, "seed": 0})
        if smoke:
            for role in ("policy", "critic", "reference"):
                c.train[role].update(
                    {
                        "max_steps": 3,
                        "batch_size": 2,
                        "eval_every_steps": 2,
                        "n_samples": 12,
                        "val_n_samples": 2,
                    }
                )
            e.update(
                {
                    "limit": 3,
                    "validation_limit": 2,
                    "temperatures": (0.5, 1.0),
                    "n_samples": 5,
                    "max_new_tokens": 24,
                    "batch_size": 8,
                    "workers": 2,
                }
            )
            c.credit.max_solutions = 8
            c.credit.batch_size = 8
            c.bootstrap.n_resamples = 1000
    return finalize(c)


def parse_list(text, key: str, cast=str) -> list:
    """'a,b' (or a tuple / an int) → [a, b]; ValueError naming `key` when empty or malformed."""
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        out = [cast(str(x).strip()) for x in items if str(x).strip()]
    except ValueError:
        out = None
    common._check(bool(out), key, text, "need a comma-separated list")
    common._check(len(set(out)) == len(out), key, text, "no duplicates")
    return out


def validate(c):
    """Value checks naming the key (run again after command-line overrides)."""
    for key in ("arms", "study_arms"):
        bad = [a for a in parse_list(c[key], key) if a not in ARMS]
        common._check(not bad, key, c[key], f"arms from {ARMS}")
    bad = [k for k in parse_list(c.critics, "critics") if k not in CRITICS]
    common._check(not bad, "critics", c.critics, f"critics from {tuple(CRITICS)}")
    common._check(
        c.control_critic in CRITICS,
        "control_critic",
        c.control_critic,
        f"one of {tuple(CRITICS)}",
    )
    common._check(c.oracle_ratio > 0, "oracle_ratio", c.oracle_ratio, "need > 0")
    for key in ("seeds", "study_seeds"):
        common._check(
            all(s >= 0 for s in parse_list(c[key], key, int)), key, c[key], "need integers ≥ 0"
        )
    for role, t in c.train.items():
        common._check(t.max_steps > 0, f"train.{role}.max_steps", t.max_steps, "need > 0")
        common._check(t.batch_size > 0, f"train.{role}.batch_size", t.batch_size, "need > 0")
    e = c.eval
    common._check(
        len(e.temperatures) > 0 and all(float(t) > 0 for t in e.temperatures),
        "eval.temperatures",
        e.temperatures,
        "need a non-empty list of values > 0",
    )
    common._check(
        e.n_samples >= max(e.k), "eval.n_samples", e.n_samples, f"need ≥ max(eval.k) = {max(e.k)}"
    )
    common._check(
        c.bootstrap.n_resamples >= 1000,
        "bootstrap.n_resamples",
        c.bootstrap.n_resamples,
        "need ≥ 1000",
    )


def finalize(c):
    validate(c)
    return common.finalize(c)
