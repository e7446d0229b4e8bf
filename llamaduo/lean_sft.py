"""Training without the work plain TRL does on a CPU but the loss does not need.

Profiled (torch.profiler, SmolLM2-135M, 16 No Robots rows, batch 4, CPU, TRL 1.16; see
benchmarks/README.md): TRL's fused LM head scores *every* position through the 49k-word
vocabulary when the device has no Triton (its GPU path keeps only label positions), so prompt and
padding tokens cost about a third of a step; LoRA dropout's masks and copies another fifth (the
default is 0 now); rows padded to the longest of a random batch add the rest.

So the vocabulary projection runs only on the hidden states of label positions, and with
`train.group_by_length` batches are drawn from rows of similar length (seeded; the batch order is
still shuffled; off by default because it changes the optimisation, not just its cost). Rows stay
in their own padded batch rows rather than being concatenated: concatenating (TRL's padding-free
mode) needs flash-attention's variable-length kernel to avoid attention over the whole
concatenation, which CPUs do not have (measured: 1.2x slower at batch 8). The loss is TRL's
completion-token mean (tests/test_lean_sft.py compares the two on the same batch).
"""

from __future__ import annotations

import random

# Models whose logits are not just `lm_head(hidden)`: their loss goes through TRL's own path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def plain_lm_head(config) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return not any(getattr(text, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS)


# Tokens one CPU forward pass should hold: fewer rows of a batch per pass when rows are long, so
# long rows run alone and unpadded, short ones still together (benchmarks/train_speed.py).
CPU_TOKENS_PER_PASS = 512


def cpu_micro_batch(mean_tokens: float, batch_size: int, tokens_per_pass: int = CPU_TOKENS_PER_PASS) -> int:
    """Rows per forward pass on a CPU. A batch is split into passes whose gradients add up (the loss
    is normalised by the whole batch's label tokens, so the update is the batch's, only its padding
    is gone); a divisor of `batch_size`, so the effective batch stays exact."""
    want = max(1, min(batch_size, int(tokens_per_pass // max(mean_tokens, 1.0))))
    return max(d for d in range(1, want + 1) if batch_size % d == 0)


def length_grouped_order(lengths: list[int], batch_size: int, seed: int, group: int = 16) -> list[int]:
    """Sample order in which each run of `batch_size` holds rows of similar length: shuffle, sort
    within groups of `group` batches, then shuffle the batches (a partial last batch stays last,
    so batch boundaries line up with the data loader's)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = group * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    return [i for b in full + [b for b in batches if len(b) < batch_size] for i in b]


def completion_nll(model, inputs: dict, num_items_in_batch=None):
    """(loss, logits at label positions, their labels): the backbone runs on the whole batch, the
    vocabulary projection only where the next token is a label."""
    import torch.nn.functional as F

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.base_model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                  use_cache=False).last_hidden_state[:, :-1]
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
    targets = labels[mask]
    nll = F.cross_entropy(logits, targets, reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
    return nll / denom, logits.detach(), targets


def lean_trainer_class(group_by_length: bool = False):
    """An SFTTrainer whose loss touches only completion positions; optionally length-grouped batches."""
    import torch
    from torch.utils.data import Sampler
    from trl import SFTTrainer

    class LengthGroupedSampler(Sampler):
        def __init__(self, lengths: list[int], batch_size: int, seed: int):
            self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

        def __len__(self):
            return len(self.lengths)

        def __iter__(self):
            self.epoch += 1
            return iter(length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch))

    class LeanSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if not group_by_length:
                return super()._get_train_sampler(train_dataset)
            ds = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler([len(x) for x in ds["input_ids"]], self.args.train_batch_size,
                                        self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not plain_lm_head(self.model.config):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, logits, targets = completion_nll(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages the gradients
            mode = "train" if model.training else "eval"
            if len(targets):
                with torch.no_grad():
                    self._metrics[mode]["mean_token_accuracy"].append(
                        (logits.argmax(-1) == targets).float().mean().item())
            return (loss, {"logits": logits}) if return_outputs else loss

    return LeanSFTTrainer
