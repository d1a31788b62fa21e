"""models.serialization.copy_files: tokenizer/model files are carried as regular files, and a
hostile model directory (a symlink leaving it, a FIFO) cannot copy host files into the output."""

import os
import stat

import jax.numpy as jnp
import pytest

from wmtp_jax.models import ModelArgs, save_model
from wmtp_jax.models.serialization import UnsafeFileError, copy_files, tokenizer_dir_files


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "secret").write_text("root:$6$hash:19000:0:99999:7:::\n")  # a host file
    tok = tmp_path / "model" / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return tmp_path / "model"


def _tiny_params():
    return {"w": jnp.ones((2, 2), jnp.float32)}


def test_symlink_leaving_the_model_dir_is_refused_and_nothing_written(model_dir, tmp_path):
    tok = model_dir / "tokenizer"
    os.symlink(tmp_path / "secret", tok / "tokenizer.json")
    files = tokenizer_dir_files(tok)
    assert [f.name for f in files] == ["tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(
        UnsafeFileError,
        match=rf"{tok / 'tokenizer.json'}: a symlink to "
        rf"{tmp_path / 'secret'}, outside the source directory {model_dir}",
    ):
        save_model(
            tmp_path / "out",
            _tiny_params(),
            kind="mtp",
            args=ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=8),
            tokenizer=files,
        )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []  # no temp dir


def test_tokenizer_dir_that_is_a_symlink_out_of_the_model_dir_is_refused(tmp_path):
    host = tmp_path / "host_etc"
    host.mkdir()
    (host / "shadow").write_text("secret")
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(host, model / "tokenizer")
    with pytest.raises(UnsafeFileError, match="shadow: a symlink to .*host_etc/shadow, outside"):
        copy_files(tokenizer_dir_files(model / "tokenizer"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_inside_symlinks_and_hf_cache_blobs_are_copied_as_regular_files(model_dir, tmp_path):
    tok = model_dir / "tokenizer"
    (model_dir / "common.json").write_text('{"a": 1}')
    os.symlink("../common.json", tok / "tokenizer.json")  # inside <model>: fine
    os.chmod(tok / "tokenizer_config.json", 0o600)
    names = copy_files(tokenizer_dir_files(tok), tmp_path / "out")
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    for n in names:
        st = os.lstat(tmp_path / "out" / n)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"a": 1}'
    # Hugging Face hub cache: snapshots/<rev>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_text("tok")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    os.symlink("../../blobs/abc123", snap / "tokenizer.json")
    assert copy_files([snap / "tokenizer.json"], tmp_path / "hf") == ["tokenizer.json"]
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == "tok"


def test_fifo_is_refused(model_dir, tmp_path):
    fifo = model_dir / "tokenizer" / "tokenizer.model"
    os.mkfifo(fifo)
    assert [f.name for f in tokenizer_dir_files(fifo.parent)] == ["tokenizer_config.json"]
    with pytest.raises(UnsafeFileError, match="tokenizer.model: not a regular file"):
        copy_files([fifo], tmp_path / "out")  # O_NONBLOCK: never hangs on the FIFO
