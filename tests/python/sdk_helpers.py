"""What the openai-SDK test files share: the conversation they send and
readers for the gateway's metrics."""

from __future__ import annotations

import re
import uuid

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Plan the next step for the deploy."},
]
USER_TEXT = MESSAGES[-1]["content"]
PLAIN_DECIMAL = re.compile(r"^\d+(\.\d{1,9})?$")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (label order free); 0 if absent."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        found = dict(_LABEL.findall(m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return 0.0


def request_id() -> str:
    return f"pytest-{uuid.uuid4()}"
