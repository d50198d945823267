"""Helpers for the tool-use tests: tools that misbehave, and a tiny tokenizer whose chat template renders tools.

Standard library only at import: the tool worker imports this module (a fresh interpreter) to run the tools here.
"""

from __future__ import annotations

import time

# A Qwen2.5-style template (Hermes tool calls) over rlhfkit's role tokens: the tool schemas go into a system turn,
# an assistant turn renders its calls as <tool_call>{json}</tool_call> and ends with EOS and a newline, and
# consecutive tool results fold into one user turn of <tool_response> blocks, as Qwen2.5's template does.
TOOL_TEMPLATE = (
    "{%- if tools %}<|system|>You may call these tools, one <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>"
    " each:\n<tools>{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{%- endfor %}{{ '\\n' }}</tools><|end|>"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|assistant|>{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}<tool_call>"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>{%- endfor %}"
    "{{ eos_token + '\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}<|user|>{%- endif %}"
    "<tool_response>{{ message.content }}</tool_response>"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}<|end|>{%- endif %}"
    "{%- else %}<|{{ message.role }}|>{{ message.content }}<|end|>{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{%- endif %}"
)


def tool_tokenizer():
    """A byte-level BPE tokenizer (trained on a few tool-use lines) with TOOL_TEMPLATE as its chat template."""
    from rlhfkit.data.tokenizer import train_tokenizer

    lines = ['<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 456"}}</tool_call>',
             "<tool_response>56088</tool_response>", "What is 123 times 456? The answer is 56088."] * 20
    tok = train_tokenizer(lines, vocab_size=400, min_frequency=1)
    tok.chat_template = TOOL_TEMPLATE
    return tok


def explode(message: str) -> str:
    """Raise an error on purpose.

    Args:
        message: The error message.
    """
    raise RuntimeError(message)


def hang(seconds: float) -> str:
    """Sleep far past any timeout.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


def flood(megabytes: int) -> str:
    """Return a huge output.

    Args:
        megabytes: How many megabytes of text to return.
    """
    return "x" * (megabytes * 1024 * 1024)


def shout(text: str) -> str:
    """Print to stdout, then answer.

    Args:
        text: Any text.
    """
    print("noise on stdout that must not reach the trainer's pipe")
    return text.upper()


def die(code: int) -> str:
    """Kill the interpreter running the tool.

    Args:
        code: The exit code.
    """
    import os

    os._exit(code)
