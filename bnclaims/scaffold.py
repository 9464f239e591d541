"""``bnclaims new ID``: write a claim file that passes ``bnclaims check`` as it is."""

from __future__ import annotations

import json
from pathlib import Path

from bnclaims import experiments as registry
from bnclaims.cache import atomic_write
from bnclaims.claims import ID_PATTERN, did_you_mean
from bnclaims.errors import UserError

DEFAULT_EXPERIMENT = "batchnorm-moments"

TEMPLATE = """\
# A claim about batch normalization, tested by an experiment.
# Format: `bnclaims schema` prints the JSON Schema; README.md explains every key.
id: {id}
title: {title}
claim: >
  State the claim in plain words, as a statement an experiment can test.
scope: >
  What the author asserts and in what setting (training or inference mode, which network,
  "usually" or "always"), read from the thread. For a question, the assertion it implies.
source:
  thread: {thread}
  quote: {quote}
tags: [draft]           # a draft is checked and run but never published: remove 'draft' to publish
experiment: {experiment}
params: {{}}            # parameters of the experiment (see `bnclaims list --experiments`)
seeds: 10
rule:
  conditions:           # headline: only what the quote asserts; these decide the verdict
    - name: what must hold
      tests: {tests}    # the words of the quote this condition tests
      holds: {holds}
  beyond: []            # everything outside the sentence: shown beside the verdict, never part of it
explanation: >
  What was measured, what came out, and why. Shown on the claim's page.
references:
  - title: "Ioffe & Szegedy 2015, Batch Normalization"
    arxiv: "1502.03167"
"""


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def scaffold(claim_id: str, claims_dir: Path, *, experiment: str | None = None, thread: str | None = None,
             force: bool = False) -> Path:
    if not ID_PATTERN.match(claim_id):
        raise UserError(f"claim id must be lowercase words joined by '-', e.g. my-new-claim (found {claim_id!r})")
    path = claims_dir / f"{claim_id}.yaml"
    if path.exists() and not force:
        raise UserError(f"{path} already exists (use --force to overwrite)")
    known = registry.load_all()
    name = experiment or (DEFAULT_EXPERIMENT if DEFAULT_EXPERIMENT in known else min(known, default=None))
    if name not in known:
        raise UserError(f"unknown experiment (found {name!r}{did_you_mean(str(name), known)})")
    exp = known[name]
    metric = next(iter(exp.metrics))
    threads = sorted((claims_dir / "threads").glob("*.txt"))
    if thread:
        chosen = claims_dir / "threads" / (thread if thread.endswith(".txt") else thread + ".txt")
        if not chosen.is_file():
            raise UserError(f"no such thread {chosen} (found {[t.stem for t in threads]})")
    elif threads:
        chosen = threads[0]
    else:
        raise UserError(f"no threads in {claims_dir / 'threads'}: add the source thread there first")
    words = chosen.read_text(encoding="utf-8").split()
    quote = " ".join(words[:8]) or "?"
    title = "Write the title: what the sentence claims, in a few words"
    text = TEMPLATE.format(id=claim_id, title=_yaml_string(title), thread=chosen.stem, quote=_yaml_string(quote),
                           tests=_yaml_string(" ".join(words[:3]) or "?"), experiment=name,
                           holds=f"mean({metric}) > 0")
    atomic_write(path, text.encode())
    return path
