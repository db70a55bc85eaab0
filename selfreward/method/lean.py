"""The lean losses (`sft.logprobs` / `dpo.logprobs: selected`, the default): log-probabilities computed at
response tokens only, with a hand-written backward (`SelectedLogProbs`), dropout masks drawn with
`torch.rand` (`FastDropout`), the paper's DPO loss, and the TRL trainers that use them. On a CPU these
make a LoRA step about twice as fast as TRL's default head (benchmarks/bench_train.py); the plain TRL
trainers (`logprobs: trl`) stay available for comparison and for several processes.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys

import torch
import torch.nn.functional as F
from trl import DPOTrainer, SFTTrainer

from selfreward.method.budget import HEAD_CHUNK
from selfreward.models import final_logit_cap, soft_cap


def token_logprobs(model, input_ids, attention_mask, labels, recompute: bool = True):
    """log p(next token) at every position whose next label is not -100, as a [batch, length - 1] fp32
    tensor (0 elsewhere), with the positions' mask.

    The output layer runs on those positions only, never on prompts or padding (TRL's default head
    scores every position on CPU and adds full-vocabulary entropy and top-1 statistics for logging),
    and `SelectedLogProbs` keeps its backward to one pass over the logits."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    weight = model.get_output_embeddings().weight
    values = SelectedLogProbs.apply(hidden[:, :-1][mask], weight, targets[mask], final_logit_cap(model), recompute)
    # masked_scatter keeps a batch without any response token connected to the graph (a zero loss)
    return values.new_zeros(mask.shape).masked_scatter(mask, values), mask


class SelectedLogProbs(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[target] for N positions, by hand in both directions, never holding a
    [N, vocab] tensor across the backward.

    The logits are formed a chunk of `CHUNK` positions at a time, in the compute dtype, and the softmax
    statistics and the gradient of the logits, onehot(target) - softmax, in one reused fp32 buffer of
    [CHUNK, vocab]. Where the output layer is frozen (LoRA, the default), that gradient is taken through the
    layer at once, in the forward, d log p / d hidden = (onehot - softmax) @ weight, so the backward only
    scales those [N, hidden] rows by the incoming gradient (Liger's fused linear cross-entropy, for any
    upstream loss): one pass over the vocabulary, one exp per logit. Where the layer trains too (full
    fine-tuning, a tied embedding), its gradient needs the incoming gradient, so the backward forms the
    logits again chunk by chunk (`recompute`) or, without it, reads them back from the forward
    (`method.budget.head_bytes` says what each holds)."""

    CHUNK = HEAD_CHUNK  # positions per chunk (`method.budget`, the rule `selfreward plan` sizes by)

    @staticmethod
    def forward(ctx, hidden, weight, targets, cap, recompute):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        hidden, w = hidden.to(dtype), weight.to(dtype)
        exact = torch.promote_types(dtype, torch.float32)  # softmax statistics in fp32 at least
        fused = not ctx.needs_input_grad[1]  # a frozen output layer: its gradient is not needed
        keep = not fused and not recompute  # the logits read back in the backward
        lse = torch.empty(len(targets), dtype=exact, device=hidden.device)
        values = torch.empty(len(targets), dtype=exact, device=hidden.device)
        rows_max = min(len(targets), SelectedLogProbs.CHUNK)
        buffer = torch.empty(rows_max, w.shape[0], dtype=exact, device=hidden.device)
        low = buffer if dtype == exact else torch.empty(rows_max, w.shape[0], dtype=dtype, device=hidden.device)
        grad_rows = torch.empty(hidden.shape, dtype=exact, device=hidden.device) if fused else None
        kept = torch.empty(len(targets), w.shape[0], dtype=dtype, device=hidden.device) if keep else None
        for rows in SelectedLogProbs._chunks(len(targets)):
            n = rows.stop - rows.start
            z = SelectedLogProbs._logits(hidden[rows], w, cap)
            top = z.amax(-1, keepdim=True).to(exact)
            shifted = buffer[:n].copy_(z).sub_(top).exp_()  # in the buffer: no fp32 temporary of the chunk
            total = shifted.sum(-1, keepdim=True)
            lse[rows] = total.log().squeeze(-1) + top.squeeze(-1)
            values[rows] = z.gather(-1, targets[rows, None]).squeeze(-1).to(exact) - lse[rows]
            if fused:  # d log p[target] / d hidden = (onehot(target) - softmax) @ weight
                dlogits = SelectedLogProbs._through_cap(shifted.div_(total).neg_(), z, targets[rows], cap,
                                                        torch.ones(n, 1, dtype=exact, device=hidden.device))
                grad_rows[rows] = (dlogits if low is buffer else low[:n].copy_(dlogits)) @ w
            elif keep:
                kept[rows] = z
        ctx.cap, ctx.recompute, ctx.weight_dtype, ctx.fused = cap, recompute, weight.dtype, fused
        if fused:
            ctx.save_for_backward(grad_rows)
        else:
            ctx.save_for_backward(hidden, w, targets, lse, kept)
        return values

    @staticmethod
    def _logits(hidden, w, cap):
        return soft_cap(hidden @ w.T, cap)

    @staticmethod
    def _through_cap(dlogits, z, targets, cap, g):
        """onehot(target) * g + dlogits (dlogits: -softmax * g), through cap * tanh(raw / cap) when capped."""
        dlogits.scatter_add_(1, targets[:, None], g)
        if cap:
            dlogits.mul_(1 - (z.to(dlogits.dtype) / cap) ** 2)
        return dlogits

    @staticmethod
    def _chunks(n: int):
        return [slice(start, min(start + SelectedLogProbs.CHUNK, n)) for start in range(0, n, SelectedLogProbs.CHUNK)]

    @staticmethod
    def backward(ctx, grad):
        if ctx.fused:  # the gradient rows were formed in the forward: scale them (autograd casts to the input's dtype)
            (grad_rows,) = ctx.saved_tensors
            return grad_rows * grad.to(grad_rows.dtype)[:, None], None, None, None, None
        hidden, w, targets, lse, kept = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(w.shape, dtype=lse.dtype, device=w.device) if ctx.needs_input_grad[1] else None
        rows_max = min(len(targets), SelectedLogProbs.CHUNK)
        buffer = torch.empty(rows_max, w.shape[0], dtype=lse.dtype, device=w.device)
        low = buffer if w.dtype == lse.dtype else torch.empty(rows_max, w.shape[0], dtype=w.dtype, device=w.device)
        for rows in SelectedLogProbs._chunks(len(targets)):
            n = rows.stop - rows.start
            z = SelectedLogProbs._logits(hidden[rows], w, ctx.cap) if kept is None else kept[rows]
            g = grad[rows].to(lse.dtype)[:, None]
            # d log p[target] / d logits = onehot(target) - softmax, times the incoming gradient
            dlogits = SelectedLogProbs._through_cap(buffer[:n].copy_(z).sub_(lse[rows, None]).exp_().mul_(-g),
                                                    z, targets[rows], ctx.cap, g)
            grad_hidden[rows] = (dlogits if low is buffer else low[:n].copy_(dlogits)) @ w
            if grad_weight is not None:
                grad_weight.addmm_(dlogits.T, hidden[rows].to(lse.dtype))
        grad_weight = None if grad_weight is None else grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


class FastDropout(torch.nn.Module):
    """nn.Dropout with the same law, its mask drawn with `torch.rand` instead of `bernoulli_`, which
    on CPU took 30% of a LoRA training step (every adapter has its own dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p  # fp32 draws: bf16 ones are too coarse
        return x * keep.to(x.dtype) * (1 / (1 - self.p))


def use_fast_dropout(model):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p))
    return model


# The lean trainers subclass TRL's and rely on these TRL internals; check them on a TRL upgrade:
# - the SFT batch carries `input_ids`, `attention_mask` and `labels` (-100 outside the completion);
# - the DPO batch carries `input_ids`, `attention_mask` and `completion_mask`, chosen rows first,
#   then the rejected rows in the same order;
# - `self._metrics[mode][name]` lists are what TRL logs (averaged per logging step);
# - `self._total_train_tokens` is SFTTrainer's running token count, logged as `num_tokens`;
# - `self.ref_model` (None under LoRA, where the reference is the model with its adapter disabled);
# - with `precompute_ref_log_probs`, TRL calls `compute_ref_log_probs(model, batch)` for every batch in
#   its __init__ and adds `ref_chosen_logps` / `ref_rejected_logps` to the batches;
# - DPOTrainer's __init__ keys those cached log-probabilities by `hash_module(model)`, a name in its module
#   (`weights_digest` stands in for it there).

class _WithFastDropout:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_fast_dropout(self.model)


class LeanSFTTrainer(_WithFastDropout, SFTTrainer):
    """TRL's SFTTrainer with the loss from `token_logprobs`; data handling, optimisation, scheduling
    and logging stay TRL's."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                     recompute=self.args.gradient_checkpointing)
        # the same normalisation as TRL's: tokens of the whole accumulated batch when known
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -logps.sum() / torch.as_tensor(tokens).clamp(min=1)
        if model.training:
            self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, None) if return_outputs else loss


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The paper's sigmoid DPO loss. Both inputs hold one sequence log-probability per row, the chosen
    rows first, then the rejected rows in the same order. With `weights` (one C per pair: CREAM's
    consistency), each pair's loss is C * DPO(chosen, rejected) + (1 - C) * DPO(rejected, chosen). Returns
    the mean loss and, per pair, the implicit rewards beta * (log pi - log pi_ref) of both replies and
    their margin."""
    chosen, rejected = (policy_logps - reference_logps).chunk(2)
    margin = beta * (chosen - rejected)
    losses = -F.logsigmoid(margin)
    if weights is not None:
        weights = weights.to(margin)
        losses = weights * losses + (1 - weights) * -F.logsigmoid(-margin)
    return losses.mean(), {"rewards/chosen": beta * chosen, "rewards/rejected": beta * rejected,
                                          "rewards/margins": margin, "rewards/accuracies": (margin > 0).float()}


@contextlib.contextmanager
def eval_mode(model):
    """No dropout for the length of a block, then the mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class WeightedPreferenceCollator:
    """TRL's preference collator, passing each pair's `weight` (CREAM's consistency C) along when the rows
    carry one."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        if examples and "weight" in examples[0]:
            batch["weight"] = torch.tensor([float(e["weight"]) for e in examples])
        return batch


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a model's weights, as TRL's `hash_module` (the key of its cached reference log-probabilities)
    but over each tensor's own bytes: TRL's copies each bf16 tensor to float32 and that to a bytes object, for
    Gemma's 262k x 640 embedding 1.3 GB more resident for a moment, which set the quick tour's DPO peak."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@contextlib.contextmanager
def _digest_without_copies():
    """TRL's DPOTrainer module's `hash_module` is `weights_digest` while a lean trainer is built."""
    trl_dpo = sys.modules[DPOTrainer.__module__]
    original = getattr(trl_dpo, "hash_module", None)  # older TRLs key nothing by it
    if original is not None:
        trl_dpo.hash_module = weights_digest
    try:
        yield
    finally:
        if original is not None:
            trl_dpo.hash_module = original


class LeanDPOTrainer(_WithFastDropout, DPOTrainer):
    """TRL's DPOTrainer with `dpo_loss` on log-probabilities from `token_logprobs`. The reference
    log-probabilities are computed once, before training (`precompute_ref_log_probs`), by
    `compute_ref_log_probs`: a deterministic eval-mode forward of the starting model."""

    def __init__(self, *args, **kwargs):
        with _digest_without_copies():
            super().__init__(*args, **kwargs)
        self.data_collator = WeightedPreferenceCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        """TRL's columns plus `weight`: the Trainer drops every column not named here before the collator
        sees it (`remove_unused_columns`), and without this a weighted pair trained as an unweighted one."""
        super()._set_signature_columns_if_needed()
        if "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def compute_ref_log_probs(self, model, inputs):
        """log pi_ref of the chosen and the rejected rows of a batch. The reference is the starting model
        without dropout (the policy keeps its dropout): under LoRA the same weights with the adapter off."""
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        reference = self.ref_model or model
        adapter_off = self.accelerator.unwrap_model(self.model).disable_adapter() \
            if self.ref_model is None and hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, eval_mode(reference):
            logps = token_logprobs(reference, inputs["input_ids"], inputs["attention_mask"], labels)[0].sum(-1)
        return logps.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        logps = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], labels,
                               recompute=self.args.gradient_checkpointing)[0].sum(-1)
        if "ref_chosen_logps" in inputs:
            reference = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:
            reference = torch.cat(self.compute_ref_log_probs(model, inputs))
        loss, rewards = dpo_loss(logps, reference, self.beta, inputs.get("weight"))
        mode = "train" if model.training else "eval"
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        for key, value in {**rewards, "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}.items():
            self._metrics[mode][key].append(float(value.detach().float().mean()))
        return (loss, None) if return_outputs else loss
