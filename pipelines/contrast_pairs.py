"""Context-contrast preference pairs: when to answer and when to say "I don't know", taught
by the documents alone.

A model fine-tuned on refusals learns to refuse by the kind of question rather than by what
the documents hold: on the shipped sample, the SFT adapter's refusal out-scored the reviewer's
answer on 55 of 71 answerable validation prompts. DPO on minimal pairs removes that shortcut:
the question stays the same and only the documents change. For a share of the split's
answerable RAG examples whose documents go beyond the ones their answer cites:

- with all its documents: chosen is the reviewer's answer, rejected is "I don't know";
- with only the documents its answer does not cite (what a retrieval miss looks like, and
  harder than another question's documents): chosen is "I don't know", rejected is the
  answer, which those documents no longer support.

`train.dpo.contrast_refusal: answer_removed` builds the refusal side from all the documents
less the sentences of the cited ones that hold the answer: the documents stay on the
question's topic and lack only the fact asked for, which is how the refusal guard's
unanswerable items read (a paragraph about the entity without the asked attribute).

They are made at train time from the split's own sets (train pairs from train examples,
validation pairs from validation examples), so they can never leak across sets, and the
selection (the smallest hashes of the example ids) does not depend on file order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from pipelines.answers import AnswerContract, content_words, words
from pipelines.config import PipelineConfig


def _order(example_id: str) -> str:
    return hashlib.blake2b(example_id.encode(), digest_size=8).hexdigest()


def uncited_documents(example: dict[str, Any], rules: AnswerContract) -> list[dict[str, Any]] | None:
    """A RAG example's documents its answer does not cite, when they do not support the answer;
    None when the example cannot make a pair (a refusal, no citations, nothing left, or the
    answer still supported by what is left)."""
    answer = rules.parse(example["ideal_answer"])
    if answer.refusal or not answer.citations:
        return None
    cited = set(answer.citations)
    rest = [c for c in example.get("contexts") or [] if c["id"] not in cited]
    if not rest or rules.supported(answer, [c["text"] for c in rest]):
        return None
    return rest


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def answer_removed(example: dict[str, Any], rules: AnswerContract) -> list[dict[str, Any]] | None:
    """A RAG example's documents less the sentences of its cited documents that hold the answer
    (the ones sharing most of its content words first, until the rest no longer supports it),
    so the refusal side reads like the answered prompt with one fact missing; None when no
    such documents exist (a refusal, no citations, nothing left, or the uncited documents
    still supporting the answer)."""
    answer = rules.parse(example["ideal_answer"])
    if answer.refusal or not answer.citations:
        return None
    cited, wanted = set(answer.citations), set(content_words(answer.text))
    documents = [(c, SENTENCE_END.split(c["text"])) for c in example.get("contexts") or []]
    ranked = sorted((-len(wanted & set(words(sentence))), d, k)  # most shared words first
                    for d, (c, sentences) in enumerate(documents) if c["id"] in cited
                    for k, sentence in enumerate(sentences))
    removed: set[tuple[int, int]] = set()
    for _, d, k in ranked:
        removed.add((d, k))
        rest = [{**c, "text": " ".join(s for j, s in enumerate(sentences) if (i, j) not in removed)}
                for i, (c, sentences) in enumerate(documents)]
        rest = [c for c in rest if c["text"]]
        if not rest:
            return None
        if not rules.supported(answer, [c["text"] for c in rest]):
            return rest
    return None


REFUSAL_DOCUMENTS = {"uncited": uncited_documents, "answer_removed": answer_removed}


def contrast_pairs(examples: Iterable[dict[str, Any]], config: PipelineConfig) -> list[dict[str, Any]]:
    """Two pairs for each of the first `train.dpo.contrast_fraction` x (RAG examples) eligible
    examples in hash order, in the preference-pair record shape."""
    rules = AnswerContract(config.output)
    idk = rules.canonical(rules.idk())
    rag = [e for e in examples if e.get("kind", "rag") == "rag"]
    refusal_documents = REFUSAL_DOCUMENTS[config.train.dpo.contrast_refusal]
    eligible = []
    for example in rag:
        rest = refusal_documents(example, rules)
        if rest is not None:
            eligible.append((_order(example["id"]), example, rest))
    eligible.sort(key=lambda t: t[0])
    wanted = round(config.train.dpo.contrast_fraction * len(rag))
    pairs = []
    for _, example, rest in eligible[:wanted]:
        shared = {"example_id": example["id"], "kind": "rag", "label": example.get("label"),
                  "cluster_id": example.get("cluster_id"), "session_id": example.get("session_id"),
                  "query": example["query"]}
        suffix = example["id"].removeprefix("ex-")
        pairs.append({**shared, "id": f"pr-answer-{suffix}", "source": "contrast_answer",
                      "contexts": example["contexts"], "chosen": example["ideal_answer"], "rejected": idk})
        pairs.append({**shared, "id": f"pr-refuse-{suffix}", "source": "contrast_refusal",
                      "contexts": rest, "chosen": idk, "rejected": example["ideal_answer"]})
    return pairs
