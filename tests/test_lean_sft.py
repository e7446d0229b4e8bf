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


def test_cpu_micro_batch_splits_batches_of_long_rows_and_keeps_short_ones_together():
    from llamaduo.lean_sft import cpu_micro_batch

    assert cpu_micro_batch(60, 8) == 8  # the demo's tickets: one pass per batch, as before
    assert cpu_micro_batch(230, 4) == 2 and cpu_micro_batch(350, 4) == 1  # long rows run (nearly) alone
    for mean in (1, 7.5, 64, 100, 129, 256, 511, 513, 4000):
        for batch in (1, 2, 3, 4, 6, 8, 12, 16):
            micro = cpu_micro_batch(mean, batch)
            assert 1 <= micro <= batch and batch % micro == 0, (mean, batch, micro)


def _lora_state(trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


def test_one_row_per_pass_makes_the_same_update_as_the_padded_batch(tmp_path, tiny_model_dir):
    """Accumulating one-row passes is the batch's update (the loss is normalised by the batch's label
    tokens), only without padding: same LoRA weights after two steps (the first is warm-up), from the same start."""
    data = atomic_write_jsonl(tmp_path / "train.jsonl", ROWS)
    trainers = []
    for micro in (3, 1):
        trainers.append(build_trainer(TrainSpec(
            base_model=str(tiny_model_dir), data_path=str(data), output_dir=str(tmp_path / f"adapter{micro}"),
            micro_batch=micro, train={"epochs": 1, "batch_size": 3, "max_length": 64, "lora_r": 4,
                                      "quantization": "none", "max_steps": 2, "learning_rate": 0.05})))
    padded, one_by_one = trainers
    assert one_by_one.args.per_device_train_batch_size == 1 and one_by_one.args.gradient_accumulation_steps == 3
    start = _lora_state(padded)
    with torch.no_grad():  # the same adapter to start from
        for n, p in one_by_one.model.named_parameters():
            if n in start:
                p.copy_(start[n])
    for t in trainers:
        t.train()
    after_padded, after_one_by_one = _lora_state(padded), _lora_state(one_by_one)
    assert any(not torch.equal(after_padded[n], start[n]) for n in start), "the step changed the adapter"
    for n in start:  # Adam divides by sqrt(v): summation-order rounding shows up to ~1e-5 of a 0.05 step
        torch.testing.assert_close(after_one_by_one[n], after_padded[n], rtol=1e-3, atol=1e-4)


def test_one_row_passes_add_up_to_the_padded_batch_gradient(trainer):
    """The normalisation the update test relies on, without Adam in between: each pass divides by the
    whole batch's label tokens, so the passes' gradients sum to the padded batch's."""
    from llamaduo.lean_sft import completion_nll

    model = trainer.model.train()
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    total = int((batch["labels"][:, 1:] != -100).sum())

    def grads(passes):
        model.zero_grad()
        for inputs in passes:
            completion_nll(model, dict(inputs), num_items_in_batch=total)[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded, one_by_one = grads([batch]), grads([trainer.data_collator([e]) for e in examples])
    assert padded.keys() == one_by_one.keys() and padded
    for n in padded:
        torch.testing.assert_close(one_by_one[n], padded[n], rtol=1e-3, atol=1e-6)  # masked vs unmasked attention rounding
