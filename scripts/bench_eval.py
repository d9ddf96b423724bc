"""Benchmark the eval stage's three speed claims, each against a reference measured in the
same run.

    python scripts/bench_eval.py                 # all three, on the newest split and run
    python scripts/bench_eval.py --items 32 --only local

1. Local generation, batched vs. sequential: the same prompts (validation items through the
   fine-tune prompt and through the baseline's strong prompt) on the base model (+ the newest
   run's adapter when there is one), greedy, in eval.hf.dtype ("auto": bfloat16 on CPUs with
   AVX512-BF16 or AMX), transformers' generate one prompt per call vs. refit's hf provider
   (length-sorted groups decoded with continuous batching, the shared prefix computed once
   and kept in one copy, a cache that grows in place: evals/decoding.py). Printed: both times, the ratio (target >= 8x) and the share of identical outputs
   (float32: all; bfloat16 rounds differently with different batch-mates, so a few differ).
   llama.cpp on the shipped GGUF, one prompt at a time, is a third reference when
   llama-cpp-python is installed.
2. The openai provider against the local API server with a fixed latency per request: the
   measured wall time vs. the ideal (requests x latency / concurrency). Target >= 90%.
3. A warm-cache re-run of a whole eval (`--force`, every output in the cache) vs. the cold
   run that filled the cache, both in this process. Target <= 5% of the cold time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def bench_local(config, items: int, batch_size: int) -> None:
    import orjson
    import torch

    from evals.providers import HFModel
    from evals.runner import Contender, EvalError, _ideal_to_item, load_run, render
    from pipelines.storage import iter_jsonl, resolve_stage_output

    try:
        run_path, manifest = load_run(config, None)
        split, adapter = Path(manifest["split"]["path"]), run_path / manifest["adapter"]["path"]
    except EvalError:  # no trained run yet: the base model alone (what the baseline runs)
        split = resolve_stage_output(Path(config.split.output_dir), None, "split", "split", RuntimeError)
        adapter = None
    shots = orjson.loads((split / "baseline_prompt.json").read_bytes())["few_shot"]
    examples = list(iter_jsonl(split / "validation.jsonl"))[:items]
    model = HFModel(config.model.base, adapter, config.eval.hf.dtype)
    tok = model.tokenizer
    tokens = config.eval.max_new_tokens
    print(f"local generation ({len(examples)} validation prompts, {config.model.base}"
          f"{' + adapter' if adapter else ' (no trained run: base model)'}, {model.dtype}, greedy, "
          f"max_new_tokens {tokens}, {torch.get_num_threads()} threads):")
    for style in ("finetune", "baseline"):
        contender = Contender(style, "hf", style, config.model.base)
        prompts = [model.render(render(_ideal_to_item(e, config, "validation"), contender, config, shots))
                   for e in examples]
        model.load()
        # The reference: transformers' generate, one prompt per call.
        t0 = time.perf_counter()
        sequential = []
        for prompt in prompts:
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
            with torch.inference_mode():
                out = model.model.generate(**ids, max_new_tokens=tokens, do_sample=False, temperature=None,
                                           top_p=None, top_k=None, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id)
            sequential.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        t_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = model.generate(prompts, batch_size=batch_size, max_new_tokens=tokens)
        t_bat = time.perf_counter() - t0
        same = sum(a == b.text for a, b in zip(sequential, batched))
        mean_prompt = sum(g.prompt_tokens for g in batched) / len(batched)
        mean_completion = sum(g.completion_tokens for g in batched) / len(batched)
        print(f"  {style} prompt ({mean_prompt:.0f} prompt / {mean_completion:.0f} completion tokens per query):")
        print(f"    sequential (transformers generate, 1 prompt per call): {t_seq:7.1f}s  "
              f"{len(prompts) / t_seq:5.2f} prompts/s")
        print(f"    refit batched (batch {batch_size}):                      {t_bat:7.1f}s  "
              f"{len(prompts) / t_bat:5.2f} prompts/s")
        print(f"    speed-up {t_seq / t_bat:.2f}x (target >= 8x); identical outputs {same}/{len(prompts)} "
              f"({same / len(prompts):.0%})")
        bench_llama_cpp(config, prompts, tokens, t_bat)


def bench_llama_cpp(config, prompts: list[str], tokens: int, t_refit: float) -> None:
    """llama.cpp on the shipped GGUF, one prompt at a time: a reference, when installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("    llama.cpp: llama-cpp-python not installed; skipped")
        return
    from pipelines.models import resolve_gguf

    gguf = resolve_gguf(config.model.base)
    if gguf is None:
        print("    llama.cpp: model.base is not a GGUF; skipped")
        return
    llm = Llama(model_path=str(gguf), n_ctx=4096, verbose=False)
    t0 = time.perf_counter()
    for prompt in prompts:
        llm(prompt, max_tokens=tokens, temperature=0.0)
    t_llama = time.perf_counter() - t0
    print(f"    llama.cpp ({gguf.name}, 1 prompt per call):            {t_llama:7.1f}s  "
          f"{len(prompts) / t_llama:5.2f} prompts/s; refit is {t_llama / t_refit:.2f}x")


def bench_openai(requests: int, latency: float, concurrency: int) -> None:
    import json
    import subprocess

    from evals.providers import OpenAIModel

    # The server runs in its own process, as a real one would: in this process its threads
    # would compete with the client for the GIL.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "server.json").write_text(json.dumps({"chat": {"latency_s": latency}}))
        server = subprocess.Popen([sys.executable, str(REPO / "scripts" / "openai_server.py"), "--port", "0",
                                   "--config", f"{tmp}/server.json", "--url-file", f"{tmp}/url"],
                                  stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if (Path(tmp) / "url").exists():
                    break
                time.sleep(0.05)
            url = (Path(tmp) / "url").read_text().strip()
            os.environ["REFIT_BENCH_KEY"] = "sk-bench-local"
            model = OpenAIModel("gpt-4.1-mini-2025-04-14", base_url=url, api_key_env="REFIT_BENCH_KEY",
                                concurrency=concurrency, timeout_s=30, max_retries=2)
            prompts = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(requests)]
            model.generate(prompts[:concurrency], max_new_tokens=16)  # warm-up: imports
            t0 = time.perf_counter()
            out = model.generate(prompts, max_new_tokens=16)
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=10)
    ideal = requests * latency / concurrency
    print(f"openai provider ({requests} requests, {latency * 1000:.0f} ms fixed latency, concurrency {concurrency}):")
    print(f"  wall {wall:.2f}s vs ideal {ideal:.2f}s: {ideal / wall:.1%} of ideal throughput (target >= 90%); "
          f"{len(out)} answers")


def bench_cache(config, guard_limit: int) -> None:
    from evals.runner import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"eval": config.eval.model_copy(update={
            "output_dir": f"{tmp}/evals", "cache": f"{tmp}/cache.sqlite", "champion": "none",
            # The guard suites only (a cold run of the whole sample eval takes many minutes).
            "suites": config.eval.suites.model_copy(update={"guard_limit": guard_limit, "validation": False,
                                                            "regression": False})})}
        cfg = config.model_copy(update=overrides)
        t0 = time.perf_counter()
        cold = evaluate(cfg, force=True)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = evaluate(cfg, force=True)
        t_warm = time.perf_counter() - t0
    n = sum(s["n"] for s in cold.report["suites"].values())
    print(f"eval cache ({n} items per contender, {len(cold.report['contenders'])} contenders, "
          f"guard suites limited to {guard_limit}):")
    print(f"  cold {t_cold:.1f}s, warm re-run {t_warm:.2f}s: {t_warm / t_cold:.1%} of cold (target <= 5%); "
          f"same gate verdict: {cold.report['gate']['passed'] == warm.report['gate']['passed']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pipelines/configs/default.yaml")
    parser.add_argument("--items", type=int, default=32, help="prompts for the local benchmark")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.1, 0.5],
                        help="fixed server latencies to measure (seconds); per-request client CPU weighs more at 0.1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--guard-limit", type=int, default=16, help="items per guard suite in the cache benchmark")
    parser.add_argument("--only", choices=["local", "openai", "cache"])
    args = parser.parse_args()
    from pipelines.config import load_config
    from pipelines.console import quiet_libraries

    quiet_libraries()  # as the CLI: no library bars or FutureWarnings between the figures

    config = load_config(args.config)
    if args.only in (None, "openai"):
        for latency in args.latency:
            bench_openai(args.requests, latency, args.concurrency)
    if args.only in (None, "local"):
        bench_local(config, args.items, args.batch_size or config.eval.hf.batch_size)
    if args.only in (None, "cache"):
        bench_cache(config, args.guard_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
