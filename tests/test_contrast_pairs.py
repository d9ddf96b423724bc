"""Context-contrast pairs (pipelines/contrast_pairs.py): the same question with its documents
(answer over "I don't know") and with only the documents its answer does not cite ("I don't
know" over the answer); and the DPO phase trained on them through the real CLI."""

from __future__ import annotations

import json

from conftest import EXPORT, REFUND, TEAM, answer, ctx, rag_logs
from test_train import train_config

from pipelines.config import PipelineConfig
from pipelines.contrast_pairs import contrast_pairs

IDK = '{"answer":"I don\'t know based on the provided documents.","citations":[]}'


def example(i: int, contexts: list, ideal: str, kind: str = "rag") -> dict:
    return {"id": f"ex-{i:012x}", "kind": kind, "query": f"question {i}?", "contexts": contexts, "ideal_answer": ideal,
            "label": "bad_format", "cluster_id": f"c-{i}", "session_id": f"s-{i}"}


REFUND_ANSWER = answer("Refunds are available within 30 days of purchase [refund-policy].", "refund-policy")


def config(fraction: float = 1.0, refusal: str = "uncited") -> PipelineConfig:
    return PipelineConfig.model_validate({"train": {"dpo": {"contrast_fraction": fraction, "contrast_refusal": refusal}}})


def test_an_answer_citing_one_of_its_documents_gives_a_pair_each_way():
    pairs = contrast_pairs([example(1, [REFUND, TEAM, EXPORT], REFUND_ANSWER)], config())
    answer_pair, refuse_pair = pairs
    assert answer_pair["source"] == "contrast_answer" and refuse_pair["source"] == "contrast_refusal"
    assert answer_pair["contexts"] == [REFUND, TEAM, EXPORT]
    assert (answer_pair["chosen"], answer_pair["rejected"]) == (REFUND_ANSWER, IDK)
    assert refuse_pair["contexts"] == [TEAM, EXPORT]  # the cited document taken out
    assert (refuse_pair["chosen"], refuse_pair["rejected"]) == (IDK, REFUND_ANSWER)
    for pair in pairs:  # the example's prompt and its set's bookkeeping
        assert (pair["example_id"], pair["query"], pair["cluster_id"]) == ("ex-000000000001", "question 1?", "c-1")
    assert len({p["id"] for p in pairs}) == 2


def test_examples_that_cannot_make_a_pair_are_skipped():
    copy = ctx("refund-copy", "Refunds are available within 30 days of purchase, says the help centre.")
    skipped = [
        example(1, [REFUND, TEAM], IDK),  # a refusal
        example(2, [REFUND], REFUND_ANSWER),  # nothing left once the cited document goes
        example(3, [REFUND, copy], REFUND_ANSWER),  # what is left still holds the answer
        example(4, [REFUND, TEAM], answer("Refunds are available within 30 days of purchase.")),  # cites nothing
        example(5, [], "Paris is the capital of France.", kind="general"),
    ]
    assert contrast_pairs(skipped, config()) == []


def test_answer_removed_keeps_every_document_less_the_sentence_that_holds_the_answer():
    pairs = contrast_pairs([example(1, [REFUND, TEAM], REFUND_ANSWER), example(2, [REFUND], REFUND_ANSWER)],
                           config(refusal="answer_removed"))
    refusals = {p["example_id"]: p for p in pairs if p["source"] == "contrast_refusal"}
    rest = {**REFUND, "text": "After 30 days no refund is given."}
    # the cited document stays, on its topic, without the sentence the answer came from; a
    # lone cited document is enough now that it is not taken out whole
    assert {i: p["contexts"] for i, p in refusals.items()} == {"ex-000000000001": [rest, TEAM], "ex-000000000002": [rest]}
    assert all((p["chosen"], p["rejected"]) == (IDK, REFUND_ANSWER) for p in refusals.values())
    assert {p["example_id"]: p["contexts"] for p in pairs if p["source"] == "contrast_answer"} == {
        "ex-000000000001": [REFUND, TEAM], "ex-000000000002": [REFUND]}


def test_answer_removed_takes_sentences_until_the_answer_is_unsupported_and_skips_what_cannot():
    # the answer's sentence, then the one that repeats it
    two = ctx("refund-policy", "Refunds are available within 30 days of purchase. Within 30 days, refunds are available. Call us.")
    (refusal,) = [p for p in contrast_pairs([example(1, [two], REFUND_ANSWER)], config(refusal="answer_removed"))
                  if p["source"] == "contrast_refusal"]
    assert refusal["contexts"] == [{**two, "text": "Call us."}]
    lone = ctx("refund-policy", "Refunds are available within 30 days of purchase.")
    skipped = [example(2, [lone], REFUND_ANSWER),  # nothing left once the answer's sentence goes
               example(3, [REFUND, TEAM], IDK)]  # a refusal
    assert contrast_pairs(skipped, config(refusal="answer_removed")) == []


def test_the_share_is_of_rag_examples_and_the_choice_does_not_depend_on_order():
    examples = [example(i, [REFUND, TEAM], REFUND_ANSWER) for i in range(20)] + [example(99, [REFUND], IDK)]
    chosen = {p["example_id"] for p in contrast_pairs(examples, config(0.2))}
    assert len(chosen) == round(0.2 * 21)
    assert {p["example_id"] for p in contrast_pairs(examples[::-1], config(0.2))} == chosen
    assert {p["example_id"] for p in contrast_pairs(examples, config(0.3))} > chosen  # a larger share adds to it


def _two_document_logs(n: int) -> list[dict]:
    logs = rag_logs(n)
    for k, rec in enumerate(logs):
        rec["contexts"].append(ctx(f"other-{k}", "Billing questions go to the billing team by email."))
    return logs


def test_sft_then_dpo_trains_on_contrast_pairs_by_default(workspace, tiny_model_dir):
    workspace.write_logs("a.jsonl", _two_document_logs(60))
    cfg = train_config(workspace, tiny_model_dir, method="sft+dpo", max_steps=2, eval_steps=2,
                       dpo={"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "contrast_fraction": 0.5})
    for stage in ("curate", "split", "train"):
        result = workspace.run(stage, "--config", str(cfg))
        assert result.exit_code == 0, result.output
    split = next((workspace.root / "datasets" / "splits").glob("spl-*"))
    n_rag = {name: sum(json.loads(line).get("kind", "rag") == "rag"
                       for line in (split / f"{name}.jsonl").read_text().splitlines()) for name in ("train", "validation")}
    run = next((workspace.root / "artifacts" / "runs").glob("run-*"))
    pairs = json.loads((run / "manifest.json").read_text())["dpo"]["pairs"]
    for name in ("train", "validation"):  # every RAG example is eligible here: half of them make two pairs each
        k = round(0.5 * n_rag[name])
        assert pairs[name] == {"contrast_answer": k, "contrast_refusal": k}, pairs
    assert f"pairs: train {pairs['train']['contrast_answer']} contrast_answer" in result.output
