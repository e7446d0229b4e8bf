"""The CPU trainer's padding-free, label-positions-only loss is TRL's loss, computed with less work."""

import pytest
import torch

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
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch, "rows concatenated, no padding"
    assert int((batch["position_ids"][0] == 0).sum()) == 3, "positions restart at each row"


def test_lean_loss_equals_trl_loss_on_padded_batches(trainer):
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [trainer.train_dataset[i] for i in range(3)]
    assert len({len(e["input_ids"]) for e in examples}) == 3, "rows of different lengths: padding matters"
    padded = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)(examples)
    packed = trainer.data_collator(examples)
    model = trainer.model.eval()
    with torch.no_grad():
        trl_loss = SFTTrainer.compute_loss(trainer, model, dict(padded))
        lean_loss = trainer.compute_loss(model, dict(packed))
    assert torch.isfinite(lean_loss) and lean_loss.item() == pytest.approx(trl_loss.item(), rel=1e-4)


def test_rows_in_one_packed_sequence_do_not_see_each_other(trainer):
    model = trainer.model.eval()
    a, b = trainer.train_dataset[0], trainer.train_dataset[1]
    packed = trainer.data_collator([a, b])
    alone = trainer.data_collator([b])
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0, len(a["input_ids"]):]
        single = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"]).logits[0]
    assert torch.allclose(together, single, atol=1e-4), "block-diagonal attention: row b is unaffected by row a"
