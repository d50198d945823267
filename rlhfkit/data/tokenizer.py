"""`rlhfkit tokenizer`: train a byte-level BPE tokenizer on a corpus, with special tokens and a chat template.

The result is saved as a transformers tokenizer, so `AutoTokenizer.from_pretrained(out_dir)` loads it and
`apply_chat_template` works like any hub tokenizer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rlhfkit import config as config_lib

EOS, PAD, BOS, UNK = "<|eos|>", "<|pad|>", "<|bos|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Each turn is "<|role|>content"; a user/system turn closes with <|end|>, an assistant turn with EOS, so the
# model learns to emit EOS exactly where its answer ends and generation stops there.
# Tools (apply_chat_template(tools=...)): a first system turn names each tool with its arguments,
# "<|system|>tools: calculator(expression) lookup(key)<|end|>" (a short line, not the JSON schemas: the world's
# models have a context of 128 tokens); an assistant turn writes its calls after its text in the Hermes form,
# <tool_call>{"name":...,"arguments":{...}}</tool_call> (compact JSON, what rollout.tools.parse_hermes reads), and a
# tool result is a "<|tool|>result<|end|>" turn. A conversation without tools renders exactly as before.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|system|>tools:' }}{% for tool in tools %}{% set fn = tool.function or tool %}"
    "{{ ' ' + fn.name + '(' + (fn.parameters.properties or {}) | list | join(', ') + ')' }}{% endfor %}"
    "{{ '<|end|>' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') }}"
    "{% if message['role'] == 'assistant' %}"
    "{% for call in message.tool_calls or [] %}{{ '<tool_call>' + {'name': call.function.name, "
    "'arguments': call.function.arguments} | tojson(separators=(',', ':')) + '</tool_call>' }}{% endfor %}"
    "{{ eos_token }}{% else %}{{ '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class Config:
    data: str = ""
    """Corpus: a dataset file or hub id (text / messages / prompt-completion / preference rows all work)."""
    output_dir: str = "runs/tokenizer"
    """Where the transformers tokenizer is saved."""
    vocab_size: int = 1024
    """Target vocabulary size, special tokens included."""
    min_frequency: int = 2
    """Minimum pair frequency for a BPE merge."""
    column_map: dict[str, str] | None = None
    """Rename columns before use, e.g. {question: prompt, answer: completion}."""
    max_rows: int = 0
    """Use at most this many rows (0: all)."""

    def validate(self) -> None:
        if not self.data:
            raise ValueError("data: a corpus file or dataset id is required")
        if self.vocab_size < 300:
            raise ValueError("vocab_size: byte-level BPE needs at least 256 byte tokens plus specials (>= 300)")


def texts_of_row(row: dict) -> Iterator[str]:
    """Every piece of natural text in a row of any supported format."""
    for key in ("text", "prompt", "completion", "chosen", "rejected", "messages"):
        value = row.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for m in value:
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    yield m["content"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2):
    """Byte-level BPE (any text round-trips) wrapped as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, EOS, BOS, UNK, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def train(cfg: Config) -> Path:
    from rlhfkit.data import load_rows

    rows = load_rows(cfg.data, column_map=cfg.column_map)
    if cfg.max_rows:
        rows = rows[: cfg.max_rows]
    tok = train_tokenizer((t for r in rows for t in texts_of_row(r)), cfg.vocab_size, cfg.min_frequency)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    config_lib.save(cfg, out / "tokenizer_config.rlhfkit.yaml")
    print(f"tokenizer: {len(tok)} tokens -> {out}")
    return out
