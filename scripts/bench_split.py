"""Benchmark `refit split` on generated curated datasets: examples/s and peak RSS.

    python scripts/bench_split.py                          # 100,000 and 1,000,000 examples
    python scripts/bench_split.py --examples 200000        # one size
    python scripts/bench_split.py --reference-max 100000   # the old code only up to this size

The dataset is shaped like curate's output: each example is a copy of one example of the
shipped sample's curated dataset (`make curate` first) with its own id, cluster, session,
label (drawn with the sample's label frequencies) and question (random words, so questions
are not near-duplicates of each other), and a quarter of the examples have a preference
pair. A frozen regression set of 40 examples already exists, as it does for every split after
the first (the first split's draw of 40 from a million examples asks scikit-learn for 25,000
folds, whose cost is quadratic in folds whatever the memory; see the closing note of
issue 12).

Each run is the real stage (`pipelines.split.split`) in a fresh process; its peak RSS is
sampled with psutil over the whole process tree. The reference is split as it was before
it streamed (`git show <rev>:pipelines/split.py`, imported under another name), on the same
files: it holds every example as a dict, so at a million examples it needs several GiB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_curate import WORDS, TreeRss  # noqa: E402 - the same vocabulary and RSS sampler

REFERENCE_REV = "e578ac5"  # the last commit whose split loaded whole lists of dicts


def sample_dataset() -> Path:
    curated = REPO / "datasets" / "curated"
    latest = curated / "LATEST"
    if not latest.exists():
        sys.exit("bench_split: no curated sample dataset; run `make curate` first")
    return curated / latest.read_text().strip()


def _question(rng: random.Random, i: int) -> str:
    return f"How do I {' '.join(rng.choice(WORDS) for _ in range(rng.randrange(8, 14)))} ({i})?"


def generate(root: Path, n: int, seed: int = 0, pair_share: float = 0.25) -> Path:
    """A curated dataset of n examples under root/datasets/curated, plus root/regression.jsonl
    (40 examples); returns the config file that points split at them."""
    sample = sample_dataset()
    examples = [orjson.loads(x) for x in (sample / "examples.jsonl").read_bytes().splitlines() if x.strip()]
    pairs = [orjson.loads(x) for x in (sample / "preferences.jsonl").read_bytes().splitlines() if x.strip()]
    shape = next(e for e in examples if e["kind"] == "rag" and e["source"] == "correction")
    labels = Counter(e["label"] for e in examples if e["kind"] == "rag")
    names, weights = list(labels), list(labels.values())
    rng = random.Random(seed)
    dataset = root / "datasets" / "curated" / "cur-bench"
    dataset.mkdir(parents=True)

    def example(i: int, prefix: str) -> dict:
        return {**shape, "id": f"{prefix}-{i:012x}", "query": _question(rng, i),
                "label": rng.choices(names, weights)[0], "cluster_id": f"c-{prefix}-{i - (rng.random() < 0.05):012x}",
                "session_id": f"s-{prefix}-{i // 2:012x}", "line": i + 1}

    with open(dataset / "examples.jsonl", "wb") as ex_file, open(dataset / "preferences.jsonl", "wb") as pair_file:
        for i in range(n):
            e = example(i, "ex")
            ex_file.write(orjson.dumps(e) + b"\n")
            if rng.random() < pair_share:
                pair = {**pairs[i % len(pairs)], "id": f"pr-{i:012x}", "example_id": e["id"], "label": e["label"],
                        "cluster_id": e["cluster_id"], "query": e["query"], "contexts": e["contexts"]}
                pair_file.write(orjson.dumps(pair) + b"\n")
    manifest = json.loads((sample / "manifest.json").read_text()) | {"id": "cur-bench"}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    (root / "datasets" / "curated" / "LATEST").write_text("cur-bench")
    regression = b"".join(orjson.dumps(example(i, "reg") | {"regression_added_by": "spl-bench"}) + b"\n"
                          for i in range(40))
    (root / "regression.jsonl").write_bytes(regression)
    import yaml

    config = yaml.safe_load((REPO / "pipelines" / "configs" / "default.yaml").read_text())
    config["curate"]["output_dir"] = str(root / "datasets" / "curated")
    config["split"]["output_dir"] = str(root / "datasets" / "splits")
    config["split"]["regression"]["path"] = str(root / "regression.jsonl")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "config.yaml"


# Modules of `rev` the reference imports whose interface has changed since (split_preferences
# lost read_pairs): the reference imports them as of `rev` too, so it runs the old code.
REFERENCE_MODULES = ("split_preferences", "split")


def reference_module(root: Path, rev: str):
    """split.py as of `rev`, imported as `split_reference` with the modules above as of `rev`
    (None when git cannot show them)."""
    module = None
    for name in REFERENCE_MODULES:
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipelines/{name}.py"], capture_output=True)
        if shown.returncode != 0:
            return None
        source = shown.stdout.decode()
        for other in REFERENCE_MODULES:
            source = source.replace(f"from pipelines.{other} import", f"from {other}_reference import")
        path = root / f"{name}_reference.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"{name}_reference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"{name}_reference"] = module  # dataclasses and the imports above look it up there
        spec.loader.exec_module(module)
    return module


def worker(kind: str, config_path: Path, rev: str) -> None:
    """One split, in this fresh process; prints its result as JSON."""
    from pipelines.config import load_config

    config = load_config(config_path)
    module = reference_module(config_path.parent, rev) if kind == "reference" else None
    if kind == "reference" and module is None:
        print(json.dumps({"error": f"git cannot show {rev}:pipelines/split.py"}))
        return
    if module is None:
        from pipelines import split as module
    tree = TreeRss()
    started = time.perf_counter()
    result = module.split(config, force=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "counts": result.manifest["counts"], "peak_rss_mib": tree.stop()}))


def run(kind: str, config_path: Path, rev: str) -> dict:
    """The worker in a fresh subprocess; it samples its own process tree's RSS (TreeRss)."""
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--config", str(config_path), "--rev", rev],
                          capture_output=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.decode()[-2000:]}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--reference-max", type=int, default=100_000,
                        help="run the old split only up to this many examples (it holds them all as dicts)")
    parser.add_argument("--rev", default=REFERENCE_REV, help="the commit whose split.py is the reference")
    parser.add_argument("--worker", choices=["refit", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.config, args.rev)
        return
    failed = []
    for n in args.examples:
        root = Path(tempfile.mkdtemp(prefix=f"bench-split-{n}-"))
        try:
            started = time.perf_counter()
            config_path = generate(root, n)
            size = (root / "datasets" / "curated" / "cur-bench" / "examples.jsonl").stat().st_size
            print(f"{n:,} examples ({size / 2**20:,.0f} MiB) generated in {time.perf_counter() - started:.0f} s")
            kinds = ["refit"] + (["reference"] if n <= args.reference_max else [])
            for kind in kinds:
                result = run(kind, config_path, args.rev)
                if "error" in result:
                    print(f"  {kind:9s} failed: {result['error']}")
                    failed.append(f"{kind} at {n:,}")
                    continue
                counts = result["counts"]
                print(f"  {kind:9s} {n / result['seconds']:8,.0f} examples/s ({result['seconds']:.0f} s), "
                      f"peak RSS {result['peak_rss_mib']:,.0f} MiB; train {counts['train']:,}, "
                      f"validation {counts['validation']:,}, held out {counts['held_out_for_regression']:,}")
            if n > args.reference_max:
                print(f"  reference not run above {args.reference_max:,} examples (--reference-max)")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if failed:
        sys.exit(f"bench_split: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
