"""The CPU trainer: TRL's loss on the same batch, computed with less work; length-grouped batches."""

import pytest
import torch

from llamaduo.lean_sft import length_grouped_order, plain_lm_head
from llamaduo.store import atomic_write_jsonl
from llamaduo.train import TrainSpec, build_trainer

ROWS = [{"id": str(i), "instruction": "Sort these: " + "apple pear " * (i + 1), "response": "fruit " * (1 + i % 3)}
        for i in range(6)]


@pytest.fixture
def trainer(tmp_path, tiny_model_dir):
    data = atomic_write_jsonl(tmp_path / "train.jsonl", ROWS)
    spec = TrainSpec(base_model=str(tiny_model_dir), data_path=str(data), output_dir=str(tmp_path / "adapter"),
                     train={"epochs": 1, "batch_size": 3, "max_length": 64, "lora_r": 4, "quantization": "none"})
    return build_trainer(spec)


def test_cpu_training_uses_the_lean_trainer(trainer):
    assert type(trainer).__name__ == "LeanSFTTrainer" and trainer.llamaduo_meta["lean_cpu_loss"] is True
    assert plain_lm_head(trainer.model.config)


def test_lean_loss_equals_trl_loss_on_the_same_padded_batch(trainer):
    from trl import SFTTrainer

    examples = [trainer.train_dataset[i] for i in range(3)]
    assert len({len(e["input_ids"]) for e in examples}) == 3, "rows of different lengths: padding matters"
    batch = trainer.data_collator(examples)
    model = trainer.model.eval()
    with torch.no_grad():
        trl_loss = SFTTrainer.compute_loss(trainer, model, dict(batch))
        lean_loss = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(lean_loss) and lean_loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)


def test_lean_loss_trains_lora_only(trainer):
    named = dict(trainer.model.named_parameters())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.compute_loss(trainer.model.train(), dict(batch)).backward()
    assert all((p.grad is not None) == ("lora_" in n) for n, p in named.items()), "gradients reach LoRA weights only"
    assert any(float(p.grad.abs().sum()) > 0 for n, p in named.items() if "lora_B" in n)


def test_length_grouped_order_groups_similar_lengths_and_keeps_every_row():
    lengths = [5, 300, 7, 290, 6, 310, 8, 305, 320]
    order = length_grouped_order(lengths, batch_size=2, seed=1, group=8)
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[i:i + 2] for i in range(0, 8, 2)]
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) < 100 for b in batches), batches
    assert order == length_grouped_order(lengths, 2, seed=1, group=8), "seeded"
    assert {tuple(length_grouped_order(lengths, 2, seed=s, group=8)) for s in range(6)}.__len__() > 1, \
        "batch order still shuffled"


def test_length_grouped_sampler_drives_the_dataloader(tmp_path, tiny_model_dir):
    data = atomic_write_jsonl(tmp_path / "train.jsonl", ROWS)
    trainer = build_trainer(TrainSpec(base_model=str(tiny_model_dir), data_path=str(data),
                                      output_dir=str(tmp_path / "adapter"),
                                      train={"epochs": 1, "batch_size": 3, "max_length": 64, "lora_r": 4,
                                             "quantization": "none", "group_by_length": True}))
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
    loader = trainer.get_train_dataloader()
    sizes = [b["input_ids"].shape for b in loader]
    assert sum(s[0] for s in sizes) == len(ROWS)
