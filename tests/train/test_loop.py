"""The shared loop with a plain batch iterable, as train-ss / finetune will use it."""

import json

import pytest
import torch

from protrna.alphabet import Alphabet
from protrna.data.masking import mask_tokens
from protrna.train.loop import TrainConfig, make_accelerator, train
from protrna.train.pretrain import mlm_loss
from protrna.train.transfer import extend_vocabulary, freeze_for_transfer

from .conftest import tiny_esm2


def transfer_model(layers=1):
    lm = extend_vocabulary(tiny_esm2())
    freeze_for_transfer(lm, layers)
    return lm


def mlm_batch(sequences, seed=0, width=None):
    ids = [[33 + "augc".index(c) for c in s] for s in sequences]
    tokens = Alphabet().pad_batch(ids)
    if width is not None:  # pad further, to compare batches cut differently
        tokens = torch.cat([tokens, torch.ones(len(ids), width - tokens.shape[1], dtype=torch.long)], dim=1)
    inputs, labels = mask_tokens(tokens, torch.Generator().manual_seed(seed), mask_prob=0.3)
    return {
        "input_ids": inputs,
        "attention_mask": tokens.ne(1).long(),
        "labels": labels,
        "n_items": int(labels.ne(-100).sum()),
        "n_tokens": int(tokens.ne(1).sum()),
    }


def forever(*batches):
    while True:
        yield from batches


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_falls_on_a_fixed_batch(tmp_path):
    batch = mlm_batch(["augcaugcaaggccuu" * 3, "gggaaacccuuu" * 4, "acgu" * 10])
    config = TrainConfig(tmp_path, max_steps=25, lr=3e-3, warmup_steps=0, min_lr=3e-3, log_every=1)
    train(config, make_accelerator(config), transfer_model(layers=3), forever(batch), mlm_loss)
    losses = [r["loss"] for r in read_log(tmp_path / "log.jsonl")]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0]


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    # The step's gradient is the mean over every masked token, however the tokens are batched:
    # mean-of-means would weight the 1-sequence micro-batch like the 2-sequence one.
    sequences = ["augcaugcaaggccuu", "gggaaacccuuuacgu", "acguacgu"]
    width = 18
    whole = mlm_batch(sequences, seed=1, width=width)
    first, second = (
        {k: (v[rows] if torch.is_tensor(v) else v) for k, v in whole.items()}
        for rows in (slice(0, 2), slice(2, 3))
    )
    for part in (first, second):
        part["n_items"] = int(part["labels"].ne(-100).sum())
        part["n_tokens"] = int(part["attention_mask"].sum())
    assert first["n_items"] != 2 * second["n_items"]  # the two weightings would differ

    results = []
    for name, accum, batches in (("one", 1, forever(whole)), ("two", 2, forever(first, second))):
        config = TrainConfig(
            tmp_path / name, max_steps=1, lr=1e-3, warmup_steps=0, grad_accum=accum, clip_grad=1e9
        )
        model = transfer_model()
        record = train(config, make_accelerator(config), model, batches, mlm_loss)
        results.append((record, model))
    (one, model_one), (two, model_two) = results
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    for a, b in zip(model_one.parameters(), model_two.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_run_directory_is_not_overwritten(tmp_path):
    batch = mlm_batch(["acguacgu"])
    config = TrainConfig(tmp_path, max_steps=1, warmup_steps=0)
    train(config, make_accelerator(config), transfer_model(), forever(batch), mlm_loss)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, make_accelerator(config), transfer_model(), forever(batch), mlm_loss)


def test_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(tmp_path, grad_accum=0)
    assert TrainConfig(tmp_path, lr=1e-3).min_lr == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"--min-lr must lie in \[0, --lr = 0.0001\], got 1"):
        TrainConfig(tmp_path, lr=1e-4, min_lr=1.0)  # the cosine would climb to 1
    for bad in (dict(lr=-1.0), dict(weight_decay=-1.0), dict(clip_grad=-1.0), dict(betas=(0.9, 1.0))):
        with pytest.raises(ValueError, match="--"):
            TrainConfig(tmp_path, **bad)


def test_a_refused_resume_leaves_run_json_as_it_was(tmp_path):
    batch = mlm_batch(["acguacgu"])
    config = TrainConfig(tmp_path, max_steps=1, warmup_steps=0)
    train(config, make_accelerator(config), transfer_model(), forever(batch), mlm_loss, run_info={"data": "a.fa"})
    before = (tmp_path / "run.json").read_text()
    resumed = TrainConfig(tmp_path, max_steps=2, warmup_steps=0, resume=True)
    with pytest.raises(ValueError, match="resume with the same model"):  # another model
        train(resumed, make_accelerator(resumed), transfer_model(layers=2), forever(batch), mlm_loss,
              run_info={"data": "b.fa"})
    assert (tmp_path / "run.json").read_text() == before


def test_resuming_with_other_shapes_is_refused_clearly(tmp_path):
    def loss(model, batch):
        return model(batch["x"]).pow(2).mean()

    batch = {"x": torch.ones(2, 4), "n_items": 2, "n_tokens": 2}
    config = TrainConfig(tmp_path, max_steps=1, warmup_steps=0)
    train(config, make_accelerator(config), torch.nn.Sequential(torch.nn.Linear(4, 3)), forever(batch), loss)
    resumed = TrainConfig(tmp_path, max_steps=2, warmup_steps=0, resume=True)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 5))  # same names, e.g. another --hidden-dim
    with pytest.raises(ValueError, match=r"weights of other shapes.*size mismatch.*resume with the same model options"):
        train(resumed, make_accelerator(resumed), wider, forever(batch), loss)


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only fallback")
def test_fsdp_settings_fall_back_to_ddp_without_gpus(tmp_path, monkeypatch, caplog):
    # What `accelerate launch --use_fsdp ...` puts in the environment.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    with caplog.at_level("WARNING", logger="protrna"):
        accelerator = make_accelerator(TrainConfig(tmp_path))
    assert not accelerator.is_fsdp2 and accelerator.distributed_type.value in ("NO", "MULTI_CPU")
    assert "plain DDP" in caplog.text


def test_a_resume_cuts_the_log_line_a_kill_tore(tmp_path):
    batch = mlm_batch(["acguacgu"])
    config = TrainConfig(tmp_path, max_steps=2, warmup_steps=0, log_every=1, save_every=2)
    train(config, make_accelerator(config), transfer_model(), forever(batch), mlm_loss)
    log = tmp_path / "log.jsonl"
    lines = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    log.write_text("\n".join(lines) + "\n" + lines[-1][:10])  # a kill in the middle of a third record
    resumed = TrainConfig(tmp_path, max_steps=3, warmup_steps=0, log_every=1, save_every=2, resume=True)
    train(resumed, make_accelerator(resumed), transfer_model(), forever(batch), mlm_loss)
    assert [record["step"] for record in read_log(log)] == [1, 2, 3]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["max_steps"] == 3
