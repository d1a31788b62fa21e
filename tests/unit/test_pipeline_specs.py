"""pipelines/specs.py: the typed arguments of the data and model layers, built from a config."""

from wmtp_jax.configs import baseline, critic
from wmtp_jax.models.load import Runtime
from wmtp_jax.models.lora import LoRAConfig
from wmtp_jax.pipelines import specs


def test_data_spec_of_the_micro_baseline():
    d = specs.data_spec(baseline.get_config("micro"))
    assert (d.path, d.train_split, d.validation_split) == (
        "storage/datasets/synthetic",
        "train",
        "valid",
    )
    assert (d.max_length, d.batch_size, d.seed, d.append_eos) == (128, 16, 42, True)
    assert (d.num_threads, d.packing, d.pack_rows) == (1, False, 0)
    # the sampler's dict, as the loaders passed it when they read the config themselves
    assert d.sampling.sampler_dict(validation=True, pairwise=True) == {
        "n_samples": 128,
        "use_pairwise": True,
        "max_pairs_per_problem": 8,
        "difficulty_bins": {"all": [0, 25]},
        "difficulty_weights": {"all": 1.0},
        "use_length_balanced": False,
        "length_bins": [
            0,
            50,
            100,
            125,
            150,
            175,
            200,
            250,
            300,
            350,
            400,
            500,
            600,
            800,
            1000,
            1500,
            2000,
        ],
    }
    assert d.sampling.sampler_dict()["n_samples"] == 4000 and d.sampling.seed == 42


def test_runtime_lora_and_tokenizer():
    c = baseline.get_config("7b")
    assert specs.runtime(c) == Runtime("bfloat16", "full", "auto")
    assert specs.runtime(c).overrides()["param_dtype"] == "float32"
    assert specs.lora(c) == LoRAConfig(
        rank=64, alpha=128.0, dropout=0.05, targets=tuple(c.training.lora.target_modules)
    )
    assert specs.lora(baseline.get_config("micro")) is None
    assert specs.lora(critic.get_config("micro"), hf_names=True).targets[:2] == ("wq", "wk")
    assert specs.tokenizer(c.models.policy) == "storage/models/meta-llama-mtp/tokenizer"
