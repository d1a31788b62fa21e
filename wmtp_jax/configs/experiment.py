"""The WMTP study: arms × seeds, trained alike and evaluated on held-out problems.

    python -m wmtp_jax.main --config=configs/experiment.py               # micro: 3 arms × 3 seeds
    python -m wmtp_jax.main --config=configs/experiment.py:smoke         # 2 arms, 1 seed, tiny
    python -m wmtp_jax.main --config=configs/experiment.py:small         # SmolLM2-135M, 2 × 2
    python -m wmtp_jax.main --config=configs/experiment.py --config.arms=rho1 --config.seeds=2 \
        --config.output_dir=storage/experiments/mystudy                  # one cell of a grid

Per seed: the prerequisites once (critic; the rho1 reference when rho1 is an arm), the critic
credit, then every arm from the same initial policy, data order, steps and evaluation settings
(only the token weighting differs), each evaluated on the test split: greedy pass@1 and sampled
pass@1 / pass@k at the temperature that is best on the validation split (`eval.temperatures`
empty: greedy only). Every run uses its pipeline's `pipeline_variant` config (micro: the
random-init micro models; small: the `:small` configs on SmolLM2-135M-Instruct), whose steps,
batch and data sizes are the `train.<role>` defaults. See docs/study.md.
"""

from wmtp_jax.configs import baseline, common, critic, evaluation, ref_tuning, verifiable

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
    # one trained head: head weights (the :small configs' (1, .1, .1, .1)) do not apply
    "ntp": ("baseline", None, {"training.loss_heads": 1, "training.head_loss_weights": ()}),
    "verifiable": ("verifiable", "ranking", {}),
    **{f"verifiable_{k}": ("verifiable", k, {}) for k in CRITICS if k != "ranking"},
    "random_weights": ("verifiable", "control", {"weighting.control": "permute"}),
    "oracle": ("verifiable", "control", {"weighting.control": "oracle"}),
    "verifiable_negatives": ("verifiable", "ranking", {"data.use_negatives": True}),
    "rho1": ("rho1", None, {}),
}
ARMS = tuple(ARM_SPECS)
VARIANTS = ("micro", "smoke", "small")
PIPELINE_VARIANTS = ("micro", "small")  # the pipeline configs a study's runs are made from


_ROLES = {"policy": baseline, "critic": critic, "reference": ref_tuning}


def _train_entry(pipeline_config, variant: str) -> dict:
    """The steps / batch / data sizes (and learning rate, where the pipeline has one: the critic's
    parameter groups carry their own) of a pipeline's `variant` config (overridable here)."""
    c = pipeline_config.get_config(variant)
    t, s = c.training, c.data_sampling
    lr = {"learning_rate": t.learning_rate} if "learning_rate" in t else {}
    return {
        **lr,
        "max_steps": t.max_steps,
        "batch_size": t.batch_size,
        "eval_every_steps": t.eval_every_steps,
        "n_samples": s.n_samples,
        "val_n_samples": s.val_n_samples,
    }


def get_config(variant: str = "micro"):
    common.check_variant(variant, VARIANTS)
    smoke, small = variant == "smoke", variant == "small"
    pv = "small" if small else "micro"
    b = baseline.get_config(pv)
    # the closing evaluation of the pipelines (final_eval; evaluation's micro settings, which
    # eval_config starts from): the study's test numbers are comparable to their final line
    closing, ev = verifiable.get_config(pv).final_eval, evaluation.get_config("micro")
    if smoke:
        tiny = {"max_steps": 3, "batch_size": 2, "eval_every_steps": 2}
        train = {
            r: {**_train_entry(m, pv), **tiny, "n_samples": 12, "val_n_samples": 2}
            for r, m in _ROLES.items()
        }
    else:  # per role: the pipeline's own defaults (policy = every arm, so they match)
        train = {role: _train_entry(module, pv) for role, module in _ROLES.items()}
    arms = "baseline,verifiable" if smoke or small else "baseline,verifiable,rho1"
    seeds = {"smoke": "0", "small": "0,1"}.get(variant, "0,1,2")
    return common.build(
        "experiment",
        variant,
        "WMTP study: baseline vs verifiable vs rho1",
        {
            # the pipelines' config variant every run of the study starts from (models, warm
            # start, head weights, tokenizer, data, schedule; storage bootstrapped from it)
            "pipeline_variant": pv,
            # the cells this job runs (comma-separated); the report covers study_arms ×
            # study_seeds plus these, so separate jobs can fill one output_dir
            "arms": arms,
            "seeds": seeds,
            "study_arms": arms,
            "study_seeds": seeds,
            # critic objectives whose credit is measured per seed (plus those the arms need;
            # "none": only those)
            "critics": "ranking" if smoke or small else ",".join(CRITICS),
            # the critic whose weights random_weights permutes and whose mean weight oracle keeps
            "control_critic": "ranking",
            # oracle: weight ratio critical : other tokens (chosen on validation, docs/study.md)
            "oracle_ratio": 4.0,
            # when set: every finished cell's and credit's light files (no checkpoints) are
            # copied there, a study dir `python -m wmtp_jax.study.aggregate` rebuilds the report
            "publish_dir": "",
            "dataset": {"path": b.dataset.path, "max_length": b.dataset.max_length},
            "train": train,
            "eval": {
                # the split every cell is evaluated on: test; valid for a pilot that chooses a
                # setting (docs/study.md) without touching the test problems
                "split": "test",
                "limit": 3 if smoke else 0,  # problems of `split` (0 = all)
                # validation problems for the temperature choice (0 = all; the sweep decodes
                # len(temperatures) × validation_limit × n_samples sequences per cell)
                "validation_limit": 2 if smoke else 20,
                # sampled decoding: the best on validation is used; () = greedy only (small:
                # a 250-problem pass of SmolLM2 costs minutes on a CPU, a sweep many of them)
                "temperatures": (0.5, 1.0) if smoke else () if small else (0.2, 0.6, 1.0),
                "n_samples": 5 if smoke else 10,
                "k": (1, 5),
                "top_p": 0.95,
                "max_new_tokens": 24 if smoke else closing.max_new_tokens,
                "batch_size": 8 if smoke else ev.batch_size,
                "workers": 2 if smoke else ev.workers,  # sandbox processes (0 = CPU count)
                "timeout": ev.timeout,
                "sample_seed": 0,
            },
            "credit": {
                "split": "test",
                # first N held-out incorrect solutions (0 = all; small: 64, a SmolLM2 forward
                # pass over all of them costs minutes)
                "max_solutions": {"smoke": 8, "small": 64}.get(variant, 0),
                "batch_size": 8 if smoke else 16,
            },
            "bootstrap": {"n_resamples": 1000 if smoke else 2000, "seed": 0},
        },
        output_dir=f"storage/experiments/experiment-{variant}",
    )


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


def credit_critics(c) -> list[str]:
    """The critic objectives of `critics` ("none": [])."""
    return [] if c.critics == "none" else parse_list(c.critics, "critics")


def validate(c):
    """Value checks naming the key (run again after command-line overrides)."""
    common._check(
        c.pipeline_variant in PIPELINE_VARIANTS,
        "pipeline_variant",
        c.pipeline_variant,
        f"one of {PIPELINE_VARIANTS}",
    )
    for key in ("arms", "study_arms"):
        bad = [a for a in parse_list(c[key], key) if a not in ARMS]
        common._check(not bad, key, c[key], f"arms from {ARMS}")
    bad = [k for k in credit_critics(c) if k not in CRITICS]
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
            all(0 <= s < common.SEED_LIMIT for s in parse_list(c[key], key, int)),
            key,
            c[key],
            f"need integers in [0, {common.SEED_LIMIT})",
        )
    for role in c.train:
        common.check_int(c, f"train.{role}.max_steps", 1)
        common.check_int(c, f"train.{role}.batch_size", 1)
        common.check_int(c, f"train.{role}.eval_every_steps")
        # the train loader drops the last partial batch: fewer samples than one batch is no data
        common.check_int(c, f"train.{role}.n_samples", c.train[role].batch_size)
        common.check_int(c, f"train.{role}.val_n_samples", 1)
        if "learning_rate" in c.train[role]:
            common.check_number(c, f"train.{role}.learning_rate", 0, 1, lo_open=True)
    e = c.eval
    common._check(e.split in ("test", "valid"), "eval.split", e.split, "one of ('test', 'valid')")
    common._check(
        all(common.is_number(t) and t > 0 for t in e.temperatures),
        "eval.temperatures",
        e.temperatures,
        "need a list of values > 0 (empty: greedy only)",
    )
    common._check(
        len(e.k) > 0 and all(common.is_int(k) and k >= 1 for k in e.k),
        "eval.k",
        e.k,
        "need a list of integers k ≥ 1",
    )
    for key in ("n_samples", "max_new_tokens", "batch_size"):
        common.check_int(c, f"eval.{key}", 1)
    for key in ("limit", "validation_limit", "workers"):
        common.check_int(c, f"eval.{key}", 0)
    common.check_seed(c, "eval.sample_seed")
    common.check_number(c, "eval.timeout", 0, lo_open=True)
    common.check_number(c, "eval.top_p", 0, 1, lo_open=True)
    common.check_int(c, "credit.batch_size", 1)
    common.check_int(c, "credit.max_solutions", 0)
    common.check_seed(c, "bootstrap.seed")
    common._check(
        e.n_samples >= max(e.k), "eval.n_samples", e.n_samples, f"need ≥ max(eval.k) = {max(e.k)}"
    )
    common._check(
        c.bootstrap.n_resamples >= 1000,
        "bootstrap.n_resamples",
        c.bootstrap.n_resamples,
        "need ≥ 1000",
    )
