"""Training without the work plain TRL does on a CPU but the loss does not need.

Profiled (torch.profiler, SmolLM2-135M, 16 No Robots rows, batch 4, CPU, TRL 1.16): TRL's fused
LM head scores *every* position through the 49k-word vocabulary when the device has no Triton (a
GPU path scores only label positions), so prompt and padding tokens cost a third of the step;
LoRA dropout's bernoulli masks and multiplies another quarter; padding to the longest row of a
batch adds the rest. Here a micro-batch's rows are concatenated into one padding-free sequence
(position ids restart per row; transformers turns that into a block-diagonal causal mask, so rows
never attend to each other) and the vocabulary projection runs only where a label is. The loss is
the same completion-token mean TRL computes (tests/test_lean_sft.py compares the two).
"""

from __future__ import annotations


def completion_nll(model, inputs: dict, num_items_in_batch=None):
    """(loss, logits at label positions, their labels) for a padding-free batch (one row)."""
    import torch.nn.functional as F

    labels = inputs["labels"][:, 1:]
    keep = (labels[0] != -100).nonzero().squeeze(-1)  # positions whose next token is a label
    out = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False,
                logits_to_keep=keep)
    logits = out.logits[0].float()
    targets = labels[0, keep]
    nll = F.cross_entropy(logits, targets, reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else max(len(keep), 1)
    return nll / denom, logits.detach(), targets


def lean_trainer_class():
    """An SFTTrainer whose batches are padding-free and whose loss touches only completion tokens."""
    import torch
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # TRL tokenizes, masks prompts and truncates to max_length
            # labels (prompt tokens -100) were built with the dataset; this only changes how rows are batched
            self.data_collator = DataCollatorForLanguageModeling(pad_token_id=self.processing_class.pad_token_id,
                                                                 padding_free=True)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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
