"""Score the base model on a slice of the guard suites, to size their difficulty.

    .venv/bin/python scripts/calibrate_guards.py [--per-suite 40] [--batch-size 8] [--dump out.jsonl]

Greedy decoding, batched with left padding, CPU is fine (a few minutes for 40 items a suite).
General items render with the general system prompt, refusal items with the pipeline's RAG
prompt (pipelines.template.render_messages), as the eval runner does. Prints the pass rate per
suite and label; the suites are meant to land well above zero and below saturation (about
20-80%) on SmolLM2-135M-Instruct so that a regression shows. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evals.guards import SUITES, check_instruction, numeric_match, parse_json_object  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.template import render_messages  # noqa: E402


def read_suite(name: str) -> list[dict]:
    path = REPO / "evals" / "suites" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stratified(items: list[dict], k: int) -> list[dict]:
    """The first items of each label in turn, k in all: every label gets an even share."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_label[item["label"]].append(item)
    out: list[dict] = []
    queues = [list(v) for _, v in sorted(by_label.items())]
    while len(out) < k and any(queues):
        for queue in queues:
            if queue and len(out) < k:
                out.append(queue.pop(0))
    return out


def answer_text(raw: str) -> str:
    value = parse_json_object(raw)
    if value is not None and isinstance(value.get("answer"), str):
        return value["answer"]
    return raw


def is_refusal(text: str, idk: str) -> bool:
    low = text.lower()
    return "don't know" in low or "do not know" in low or "don’t know" in low or text.strip() == idk


def score(item: dict, raw: str, idk: str) -> bool:
    if item["suite"] == "instruction_following":
        return check_instruction(raw, item["check"])
    if item["suite"] == "arithmetic":
        return numeric_match(raw, item["answers"])
    text = answer_text(raw)
    if not item["answerable"]:
        return is_refusal(text, idk)
    return any(gold.lower() in text.lower() for gold in item["answers"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-suite", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--suites", nargs="*", default=list(SUITES))
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dump", type=Path, default=None, help="write every response here (JSONL)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.models import local_model_dir

    cfg = load_config(str(REPO / "pipelines" / "configs" / "default.yaml"))
    idk = cfg.output.idk_answer
    path = local_model_dir(args.model, with_weights=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()

    dump = open(args.dump, "w", encoding="utf-8") if args.dump else None
    for suite in args.suites:
        items = stratified(read_suite(suite), args.per_suite)
        prompts = []
        for item in items:
            if item["kind"] == "general":
                messages = [{"role": "system", "content": cfg.prompt.general_system},
                            {"role": "user", "content": item["query"]}]
            else:
                messages = render_messages(item, cfg.prompt, cfg.output, with_answer=False)
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        # Batches of similar length: less padding. Greedy decoding, so the order changes nothing.
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
        items, prompts = [items[i] for i in order], [prompts[i] for i in order]
        start = time.time()
        results: dict[str, list[bool]] = defaultdict(list)
        for lo in range(0, len(items), args.batch_size):
            batch = tokenizer(prompts[lo:lo + args.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**batch, do_sample=False, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for item, raw in zip(items[lo:lo + args.batch_size], texts):
                ok = score(item, raw, idk)
                results[item["label"]].append(ok)
                if dump:
                    dump.write(json.dumps({"id": item["id"], "label": item["label"], "ok": ok, "response": raw},
                                          ensure_ascii=False) + "\n")
        every = [ok for oks in results.values() for ok in oks]
        print(f"{suite}: {sum(every)}/{len(every)} = {sum(every) / len(every):.0%}  ({time.time() - start:.0f}s)")
        for label, oks in sorted(results.items()):
            print(f"  {label:24s} {sum(oks)}/{len(oks)} = {sum(oks) / len(oks):.0%}")
        sys.stdout.flush()
    if dump:
        dump.close()


if __name__ == "__main__":
    main()
