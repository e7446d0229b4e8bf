"""Behaviour of real TRL + PEFT training on a tiny randomly initialised model."""


import pytest
import torch

from llamaduo.store import atomic_write_jsonl
from llamaduo.train import TrainSpec, build_trainer, run_training

ROWS = [{"id": str(i), "instruction": f"Classify ticket {i}: my card was charged twice", "response": "billing"}
        for i in range(12)]


@pytest.fixture
def spec(tmp_path, tiny_model_dir):
    data = atomic_write_jsonl(tmp_path / "train.jsonl", ROWS)
    return TrainSpec(base_model=str(tiny_model_dir), data_path=str(data), output_dir=str(tmp_path / "adapter"),
                     train={"epochs": 1, "batch_size": 4, "max_length": 96, "learning_rate": 5e-3, "lora_r": 4,
                            "lora_alpha": 8, "quantization": "none"})


def test_lora_weights_move_and_base_weights_stay_frozen(spec, tmp_path):
    trainer = build_trainer(spec)
    named = dict(trainer.model.named_parameters())
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    assert lora and base
    assert all(not named[n].requires_grad for n in base), "base weights must be frozen"
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(lora[n], after[n]) for n in lora if "lora_B" in n), "LoRA weights must move"
    assert all(torch.equal(base[n], after[n]) for n in base), "base weights must not change"


def test_loss_only_on_completion_tokens(spec, tmp_path):
    trainer = build_trainer(spec)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    tok = trainer.processing_class
    target = tok.decode(labels[labels != -100])
    assert "billing" in target and "Classify" not in target


def test_subprocess_training_writes_adapter_atomically(spec, tmp_path):
    stats = run_training(spec, subprocess_mode=True)
    assert stats.steps == 3 and stats.rows == 12
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter.")], "no temp dirs left behind"


def test_oom_retry_halves_micro_batch_keeps_effective_batch(spec, tmp_path):
    spec.micro_batch = 2
    trainer = build_trainer(spec)
    assert trainer.args.per_device_train_batch_size == 2 and trainer.args.gradient_accumulation_steps == 2


def test_interrupted_training_resumes_from_last_checkpoint(spec, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import llamaduo.train as train_mod

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise RuntimeError("simulated crash after step 3")

    spec.train = spec.train.model_copy(update={"epochs": 2, "save_steps": 2})  # 6 steps, checkpoint every 2
    real_build = train_mod.build_trainer

    def crashing_build(s):
        trainer = real_build(s)
        trainer.add_callback(Crash())
        return trainer

    monkeypatch.setattr(train_mod, "build_trainer", crashing_build)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.train_lora(spec)
    assert train_mod.last_checkpoint(spec).name == "checkpoint-2"
    monkeypatch.setattr(train_mod, "build_trainer", real_build)
    stats = train_mod.train_lora(spec)
    assert stats.resumed_from == "checkpoint-2" and stats.steps == 6
    assert not train_mod.checkpoint_dir(spec).exists() and (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_training_reports_progress_while_it_runs(spec, capsys, caplog):
    import logging

    seen = []
    with caplog.at_level(logging.INFO, logger="llamaduo.train"):
        run_training(spec, subprocess_mode=False, on_progress=lambda step, total: seen.append((step, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0, seen
    # the Trainer's logs: one readable line each on the logger, no raw dicts on stdout
    assert "{'" not in capsys.readouterr().out
    lines = [r.getMessage() for r in caplog.records if r.name == "llamaduo.train"]
    assert any(line.startswith("training step 3/3 (epoch 1.00): ") and "train_loss" in line for line in lines), lines


def test_a_trainer_log_as_one_line():
    from llamaduo.train import log_line

    assert log_line({"loss": 2.31456, "grad_norm": 1.2, "learning_rate": 0.0048, "epoch": 0.4, "total_flos": 9.0},
                    5, 12) == "training step 5/12 (epoch 0.40): loss 2.315, grad_norm 1.2, learning_rate 0.0048"


def test_train_stats_json_holds_the_keys_training_set():
    """summary.json's `train_stats`: `{}` for a round without training, null where training said null."""
    from llamaduo.records import AnswersResult, InferStats, RoundRecord, ServiceAnswerStats, TrainStats

    assert TrainStats().model_dump(mode="json") == {}
    stats = TrainStats(steps=3, resumed_from=None)
    stats.attempt = 2  # the task adds its attempt
    assert stats.model_dump(mode="json") == {"steps": 3, "resumed_from": None, "attempt": 2}
    record = RoundRecord.model_validate({"round": 0, "train_rows": 0, "synthetic_rows_added": 0,
                                         "gate": {"passed": False, "metric": "m", "value": None, "threshold": 1},
                                         "infer_stats": {"items": 2, "backend": "hf", "tokens_per_s": None}})
    dumped = record.model_dump(mode="json")
    assert dumped["train_stats"] == {} and dumped["infer_stats"] == {"items": 2, "backend": "hf", "tokens_per_s": None}
    assert RoundRecord.model_validate(dumped).model_dump(mode="json") == dumped
    service = AnswersResult.model_validate({"stats": {"items": 3, "answered": 2, "unanswered": 1}})
    assert isinstance(service.stats, ServiceAnswerStats) and isinstance(AnswersResult().stats, InferStats)


def test_warm_start_continues_the_previous_adapter(spec, tmp_path):
    first = run_training(spec, subprocess_mode=False)
    assert first.warm_start is False
    from safetensors.torch import load_file

    before = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    warm = spec.model_copy(update={"output_dir": str(tmp_path / "adapter2"), "init_adapter": str(tmp_path / "adapter")})
    trainer = build_trainer(warm)
    loaded = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)
    # the trainable adapter starts from the saved one, not from a fresh initialisation
    for name, saved in before.items():
        live = [v for n, v in loaded.items() if n.replace(".default", "").endswith(name.split("base_model.model.")[-1])]
        assert live and torch.equal(live[0], saved), name
    trainer.train()
    moved = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert any(not torch.equal(loaded[n], moved[n]) for n in loaded), "the continued adapter trains"


def _crash_after_step_3(monkeypatch, train_mod):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise RuntimeError("simulated crash after step 3")

    real_build = train_mod.build_trainer

    def crashing_build(s):
        trainer = real_build(s)
        trainer.add_callback(Crash())
        return trainer

    monkeypatch.setattr(train_mod, "build_trainer", crashing_build)
    return real_build


def test_a_checkpoint_resumes_only_the_configuration_that_wrote_it(spec, tmp_path, monkeypatch):
    """Config A is interrupted; config B (another learning rate, same adapter path) trains from
    step 0 and leaves A's checkpoint alone; A's re-run resumes it."""
    import llamaduo.train as train_mod

    a = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2, "save_steps": 2})})
    b = a.model_copy(update={"train": a.train.model_copy(update={"learning_rate": 1e-3})})
    real_build = _crash_after_step_3(monkeypatch, train_mod)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.train_lora(a)
    monkeypatch.setattr(train_mod, "build_trainer", real_build)
    assert train_mod.last_checkpoint(a).name == "checkpoint-2" and train_mod.last_checkpoint(b) is None

    stats_b = train_mod.train_lora(b)
    assert stats_b.resumed_from is None and stats_b.steps == 6, "B trains from step 0"
    assert train_mod.last_checkpoint(a).name == "checkpoint-2", "B's finish leaves A's checkpoint for A's re-run"

    stats_a = train_mod.train_lora(a)
    assert stats_a.resumed_from == "checkpoint-2" and stats_a.steps == 6
    assert not train_mod.checkpoints_root(a).exists(), "nothing left to resume"


def test_checkpoint_key_follows_the_training_inputs(spec, tmp_path):
    from llamaduo.store import atomic_write_jsonl
    from llamaduo.train import checkpoint_key

    key = checkpoint_key(spec)
    # what cannot change the steps or the weights keeps the key (an OOM retry's micro-batch included)
    assert checkpoint_key(spec.model_copy(update={"micro_batch": 2})) == key
    assert checkpoint_key(spec.model_copy(update={"train": spec.train.model_copy(
        update={"save_steps": 7, "subprocess": False})})) == key
    moved = atomic_write_jsonl(tmp_path / "elsewhere.jsonl", ROWS)
    assert checkpoint_key(spec.model_copy(update={"data_path": str(moved)})) == key, "rows count by content"
    # what changes the training does not
    other_rows = atomic_write_jsonl(tmp_path / "other.jsonl", ROWS[:-1])
    for changed in (spec.model_copy(update={"data_path": str(other_rows)}),
                    spec.model_copy(update={"system_prompt": "Be brief."}),
                    spec.model_copy(update={"train": spec.train.model_copy(update={"lora_r": 8})}),
                    spec.model_copy(update={"train": spec.train.model_copy(update={"max_steps": 2})})):
        assert checkpoint_key(changed) != key
