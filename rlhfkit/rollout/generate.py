"""`rlhfkit generate`: batched sampling with a KV cache from any causal LM, for a prompt file, as JSONL.

The sampler is written out (rather than calling `model.generate`) because online RL depends on its exact
semantics and it is the hot loop of every rollout:
  - prompts are left-padded, and position ids come from the attention mask, so padding never shifts positions;
  - logits are divided by the temperature, then top-k / top-p filtered (both off by default, because they bias the
    PPO importance ratio, PITFALLS PPO #7);
  - a sequence stops at its first EOS; everything after it is padding and is masked out (`response_mask`);
  - finished sequences are dropped from the batch as they finish, so a long tail costs only its own rows.

    from rlhfkit import generate
    generate.run(generate.Config(model="runs/sft", prompts="prompts.jsonl", output="samples.jsonl"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.rollout import fastdecode
from rlhfkit import models
from rlhfkit.models.modeling import position_ids


@dataclass
class SamplingConfig:
    """What `generate` and `sample` share: the model, the prompt file, the output file and the sampler's settings.
    Each command adds how many samples it draws per prompt (`num_samples`, `num_responses`)."""

    model: str = ""
    """Model to sample from: a local directory or hub id of a causal LM."""
    tokenizer: str = ""
    """Tokenizer (default: the model's)."""
    prompts: str = ""
    """Prompt file or hub id: rows with a `prompt` column (string or messages); other columns are copied."""
    output: str = "samples.jsonl"
    """Output JSONL: each input row plus `completion` (same representation as the prompt) and `sample`."""
    split: str = "train"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    max_new_tokens: int = 64
    """Maximum tokens generated per sample."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Top-k filtering (0: off)."""
    batch_size: int = 64
    """Sequences (prompt x sample) per generation batch."""
    max_prompt_length: int = 512
    """Prompts longer than this are cut from the left (counted)."""
    seed: int = 42
    """Sampling seed: the same seed gives the same samples."""
    limit: int = 0
    """Use only the first N prompts (0: all)."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def validate(self) -> None:
        if not self.model or not self.prompts:
            raise ValueError("model and prompts are required")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass
class Config(SamplingConfig):
    num_samples: int = 1
    """Samples per prompt."""


@dataclass
class Samples:
    """A batch of sampled responses, as token-id lists aligned by index (no padding)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # up to and including EOS when present
    has_eos: list[bool]

    def texts(self, tokenizer) -> list[str]:
        return [tokenizer.decode(r, skip_special_tokens=True) for r in self.response_ids]


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` (B, V), by inverting the CDF: x = u * total, the first index whose cumulative
    mass exceeds x. Exact for any distribution, never picks a zero-probability token (its cumulative mass equals its
    predecessor's), and draws B uniforms where torch.multinomial draws B x V exponentials (0.6 ms of a ~6 ms
    decode step for a 2k vocabulary). The cumulative sum is in float64 so 100k-token vocabularies keep their tails.
    """
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class _HFDecoder:
    """The transformers forward with a DynamicCache: the sampler's fallback for models fastdecode doesn't cover."""

    def __init__(self, model):
        self.model = model

    def start(self, input_ids, attention, max_new_tokens):
        from transformers import DynamicCache

        self.cache, self.attn, self.pos = DynamicCache(), attention.long(), position_ids(attention)
        return self._forward(input_ids, self.pos)

    def step(self, ids):
        self.attn = torch.cat([self.attn, self.attn.new_ones(self.attn.shape[0], 1)], dim=-1)
        self.pos = self.pos[:, -1:] + 1
        return self._forward(ids[:, None], self.pos)

    def keep(self, index):
        self.cache.batch_select_indices(index)
        self.attn, self.pos = self.attn[index], self.pos[index]

    def _forward(self, ids, pos):
        out = self.model(input_ids=ids, attention_mask=self.attn, position_ids=pos, past_key_values=self.cache,
                         use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]


@torch.inference_mode()  # not just no_grad: it halves the cost of the small per-step ops
def sample(model, prompt_ids: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Samples:
    """Sample one response per prompt with a KV cache. Greedy when temperature == 0.

    Llama-family models decode through `fastdecode` (the same arithmetic without the per-step overhead of the
    transformers forward); any other model through the transformers forward."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    input_ids, attention = data_lib.pad_left(prompt_ids, pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    B = input_ids.shape[0]
    responses: list[list[int]] = [[] for _ in range(B)]
    has_eos = [False] * B
    alive = torch.arange(B, device=device)  # rows still generating
    decoder = fastdecode.for_model(model) or _HFDecoder(model)
    logits = decoder.start(input_ids, attention, max_new_tokens)
    if getattr(decoder, "static", False):
        responses, has_eos = _sample_static(decoder, logits, eos_id, max_new_tokens, temperature, top_k, top_p,
                                            generator)
        max_new_tokens = 0  # done: skip the per-row loop below
    for t in range(max_new_tokens):
        logits = logits.float()  # (b, V)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = draw(_filter_logits(logits / temperature, top_k, top_p).softmax(-1), generator)
        nxt_list = nxt.tolist()
        done = []
        for j, (row, tok) in enumerate(zip(alive.tolist(), nxt_list)):
            responses[row].append(tok)
            if tok == eos_id:
                has_eos[row] = True
                done.append(j)
        if len(done) == len(nxt_list) or t == max_new_tokens - 1:
            break
        if done:
            keep = torch.ones(len(nxt_list), dtype=torch.bool, device=device)
            keep[done] = False
            index = keep.nonzero().squeeze(-1)
            alive, nxt = alive[index], nxt[index]
            decoder.keep(index)  # finished rows stop costing compute
        logits = decoder.step(nxt)
    if was_training:
        model.train()
    return Samples(prompt_ids=[list(p) for p in prompt_ids], response_ids=responses, has_eos=has_eos)


# Rows finished? is asked every this many steps: each question makes the host wait for the device.
STOP_CHECK_EVERY = 8


def _sample_static(decoder, logits: torch.Tensor, eos_id: int, max_new_tokens: int, temperature: float, top_k: int,
                   top_p: float, generator) -> tuple[list[list[int]], list[bool]]:
    """The CUDA-graph decoder's loop (fastdecode `step_all`): every row is fed at every step, tokens stay on the
    device until the end, and the host checks for finished rows only every STOP_CHECK_EVERY steps. A row's tokens
    after its first EOS are dropped, as in the per-row loop."""
    B = logits.shape[0]
    tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=logits.device)
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    n = 0
    for t in range(max_new_tokens):
        logits = logits.float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = draw(_filter_logits(logits / temperature, top_k, top_p).softmax(-1), generator)
        tokens[:, t] = nxt
        done |= nxt == eos_id
        n = t + 1
        if n == max_new_tokens or (n % STOP_CHECK_EVERY == 0 and bool(done.all())):
            break
        logits = decoder.step_all(nxt)
    responses, has_eos = [], []
    for row in tokens[:, :n].tolist():
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        responses.append(row[:cut])
        has_eos.append(eos_id in row)
    return responses, has_eos


def run(cfg: Config) -> Path:
    cfg.validate()  # as the command line does (config.resolve)
    torch.manual_seed(cfg.seed)
    model, tokenizer, rows = load_inputs(cfg)
    out_rows = generate_rows(model, tokenizer, rows, cfg)
    out = write_output(cfg, out_rows)
    print(f"generate: {len(out_rows)} samples -> {out}")
    return out


def load_inputs(cfg: SamplingConfig) -> tuple[Any, Any, list[dict]]:
    """(model on the inference device, tokenizer, the prompt rows up to `limit`) for `generate` and `sample`."""
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code).to(models.inference_device())
    rows = data_lib.load_rows(cfg.prompts, cfg.split, cfg.column_map)
    return model, tokenizer, rows[: cfg.limit] if cfg.limit else rows


def write_output(cfg: SamplingConfig, rows: list[dict]) -> Path:
    """`cfg.output`, and the config beside it (OUTPUT.config.yaml) so the file can be reproduced."""
    out = data_lib.write_jsonl(rows, cfg.output)
    config_lib.save(cfg, Path(str(out) + ".config.yaml"))
    return out


def generate_rows(model, tokenizer, rows: list[dict], cfg: Config, progress: bool = True) -> list[dict[str, Any]]:
    """Sample `cfg.num_samples` completions per row; returns rows with `completion` and `sample` added."""
    from rich.progress import track

    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    counter: dict = {}
    encoded = []
    for r in rows:
        ids = data_lib.encode_prompt(tokenizer, r["prompt"])
        if len(ids) > cfg.max_prompt_length:
            ids = ids[-cfg.max_prompt_length:]
            counter["prompt_truncated"] = counter.get("prompt_truncated", 0) + 1
        encoded.append(ids)
    jobs = [(i, k) for i in range(len(rows)) for k in range(cfg.num_samples)]
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    out: list[dict[str, Any]] = []
    it = track(batches, description="generate") if progress else batches
    for batch in it:
        s = sample(model, [encoded[i] for i, _ in batch], tokenizer.eos_token_id, tokenizer.pad_token_id,
                   cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, gen)
        for (i, k), text, eos in zip(batch, s.texts(tokenizer), s.has_eos):
            row = dict(rows[i])
            row.pop("completion", None)
            row.update(completion=data_lib.as_completion(rows[i]["prompt"], text), sample=k, finished=eos)
            out.append(row)
    if counter:
        print(f"generate: {counter}")
    return out
