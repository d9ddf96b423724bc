"""Wall time and peak memory of each stage of `make all`, on the shipped sample, from scratch.

    python scripts/bench_stages.py                # curate, split, train, eval in a scratch folder
    python scripts/bench_stages.py --keep DIR     # ... in DIR (kept afterwards)

Each stage runs as `refit <stage>` in its own process, as `make all` runs it, in a scratch copy
of the sample (nothing cached but the converted base model), so eval generates every
prediction of both contenders. Printed per stage: wall seconds and the process's peak resident
memory (the kernel's count for the child, from wait4), against the budgets of issue 16: the
whole pipeline in 8 minutes, no stage above 2.5 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("curate", "split", "train", "eval")
BUDGET_GB = 2.5
BUDGET_MINUTES = 8


def run_stage(stage: str, folder: Path, config: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GiB, exit code) of `refit <stage>` in `folder`."""
    refit = Path(sys.executable).with_name("refit")
    command = [str(refit), stage, "--config", str(config)]
    started = time.perf_counter()
    with open(folder / f"{stage}.log", "wb") as log:
        child = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / (1024 * 1024), code  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="refit-bench-stages-"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "datasets" / "samples", folder / "datasets" / "samples", dirs_exist_ok=True)
    config = folder / "default.yaml"
    shutil.copy(REPO / "pipelines" / "configs" / "default.yaml", config)
    print(f"stages of make all on the shipped sample, from scratch in {folder} ({os.cpu_count()} CPUs):")
    total = 0.0
    try:
        for stage in STAGES:
            wall, peak, code = run_stage(stage, folder, config)
            total += wall
            # eval exits 3 when the gate fails: a verdict, not an error
            verdict = "ok" if code == 0 or (stage == "eval" and code == 3) else f"FAILED (exit {code}; {stage}.log)"
            over = f"  above the {BUDGET_GB} GB budget" if peak > BUDGET_GB else ""
            print(f"  {stage:<7} {wall:7.1f} s   peak RSS {peak:5.2f} GiB{over}   {verdict}", flush=True)
            if verdict != "ok":
                break
        print(f"  total   {total:7.1f} s ({total / 60:.1f} min; budget {BUDGET_MINUTES} min without the install)")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
