"""Forward passes shared by the trainers: token log-probs of selected positions, and scalar heads.

The language-model head is applied only where a log-prob is needed (completion tokens), not at every position:
for a small model with a 2k vocabulary the head is a quarter of the FLOPs, and prompts are often half the tokens.
Position ids are always derived from the attention mask, so left-padded (generation) and right-padded
(training) batches give a token the same position and therefore the same log-prob (PITFALLS PPO #6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting only real tokens; padding gets 0 (its outputs are never used)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a *ForCausalLM / *ForSequenceClassification model (model.model for Llama)."""
    return getattr(model, model.base_model_prefix)


def hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  packed_position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (B, T, H).

    Padded batches pass an attention mask. Packed batches (several sequences concatenated in one row, no padding)
    pass `packed_position_ids` that restart at 0 for each sequence and no attention mask: transformers then
    builds a block-diagonal causal mask, so packed sequences never attend to each other.
    """
    if packed_position_ids is not None:
        out = backbone(model)(input_ids=input_ids, position_ids=packed_position_ids, use_cache=False)
    else:
        out = backbone(model)(input_ids=input_ids, attention_mask=attention_mask.long(),
                              position_ids=position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


class TokenLogprobs(torch.nn.Module):
    """Wraps a causal LM: forward returns log p(x_{t+1} | x_<=t) at the positions where `target_mask` is True.

    Output shapes follow the DESIGN.md convention: (B, T-1), aligned with input_ids[:, 1:], zero where the
    mask is False. Logits are divided by `temperature` before the softmax so log-probs match what the sampler
    drew from (PITFALLS PPO #7). Wrapping the whole computation in one module lets DDP see one forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, target_mask, temperature: float = 1.0, with_entropy: bool = False,
                packed_position_ids=None):
        h = hidden_states(self.model, input_ids, attention_mask, packed_position_ids)[:, :-1]  # (B, T-1, H)
        mask = target_mask[:, 1:] if target_mask.shape[1] == input_ids.shape[1] else target_mask
        labels = input_ids[:, 1:]
        logits = self.model.get_output_embeddings()(h[mask]).float() / temperature  # (N, V) only where needed
        logz = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1) - logz
        logprobs = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)
        logprobs = logprobs.masked_scatter(mask, picked)
        out = {"logprobs": logprobs}
        if with_entropy:
            p = F.softmax(logits, dim=-1)
            ent = logz - (p * logits).sum(-1)
            out["entropy"] = torch.zeros_like(logprobs).masked_scatter(mask, ent)
        return out
