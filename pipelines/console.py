"""What `refit` shows: results on stdout, progress and diagnostics on stderr.

Every progress widget shares `ProgressView`: on a terminal a rich bar (or, for an OpenAI job,
a live panel); off a terminal (make, cron, CI logs) the bar is disabled and the widget prints a
plain line now and then instead, so a log file stays readable.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

console = Console(stderr=True)  # progress and diagnostics; results go to stdout
out = Console(highlight=False, soft_wrap=True)


def quiet_libraries() -> None:
    """Keep library noise out of refit's output: transformers' FutureWarnings (a deprecation
    refit cannot act on), its "Loading weights" bars and the GGUF conversion's tqdm bar.
    refit shows its own progress. Called before any stage imports those libraries: tqdm and
    transformers read these variables when first imported."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm.auto bars (the GGUF conversion)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def say(text: str) -> None:
    """One result line on stdout, printed as is (no markup, no highlighting)."""
    out.print(text, markup=False, highlight=False)


def error(message: Any) -> None:
    console.print(Text.assemble(("error: ", "red"), str(message)), highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message), highlight=False, soft_wrap=True)


def log_line(line: str) -> None:
    """A stage's log line on stderr, as is."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)


# --------------------------------------------------------------------------- progress widgets


class ProgressView:
    """The base of every progress widget: one rich bar on stderr when it is a terminal, plain
    lines (`line`) when it is not."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    @staticmethod
    def on_terminal() -> bool:
        return console.is_terminal

    def open_bar(self, label: str, total: int, *columns: ProgressColumn, completed: int = 0, **fields: Any) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, TimeElapsedColumn(),
                            console=console, disable=not self.on_terminal())
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, completed=completed, **fields)

    def update(self, **fields: Any) -> None:
        if self.task is not None:
            self.bar.update(self.task, **fields)

    def print(self, text: Any) -> None:
        """`text` is a rich Text or plain text, never markup: user text and library messages
        may contain [brackets]."""
        console.print(text, highlight=False, markup=False)

    def line(self, text: str) -> None:
        """A plain progress line, only off a terminal (on one, the bar shows it)."""
        if not self.on_terminal():
            self.print(Text(text))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class RateProgress(ProgressView):
    """curate: a bar over input bytes, showing records per second."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label
        self.started = 0.0

    def start(self, total_bytes: int) -> None:
        self.started = time.perf_counter()
        self.open_bar(self.label, total_bytes, DownloadColumn(),
                      TextColumn("{task.fields[records]} records, {task.fields[rate]}/s"), records=0, rate="0")

    def advance(self, done_bytes: int, records: int) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.update(completed=done_bytes, records=f"{records:,}", rate=f"{records / elapsed:,.0f}")


class TrainProgress(ProgressView):
    """train (LoRA): a bar over optimizer steps, with the latest loss and tokens/s; off a
    terminal, a line every tenth of the steps (step, loss, tokens/s) and per validation loss."""

    def __init__(self) -> None:
        super().__init__()
        self.total, self.done, self.tenth, self.started, self.phases = 1, 0, 0, False, 0

    def start(self, total: int, done: int) -> None:
        self.open_bar("train", total, TextColumn("step {task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[rate]} tok/s"),
                      completed=done, loss="-", val="-", rate="-")
        self.total, self.done, self.tenth = max(total, 1), done, int(10 * done / max(total, 1))
        self.started = True

    def stop(self) -> None:
        # sft+dpo: the DPO phase's starting point is measured before its step count is known.
        self.started, self.phases = False, self.phases + 1
        super().stop()

    def step(self, done: int) -> None:
        self.update(completed=done)
        self.done = done

    def log(self, logs: dict[str, float]) -> None:
        fields = {}
        step = int(logs.get("step", self.done))
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.3f}"
            rate = f", {logs['tokens_per_second']:,.0f} tokens/s" if "tokens_per_second" in logs else ""
            if int(10 * step / self.total) > self.tenth:
                self.tenth = int(10 * step / self.total)
                self.line(f"  step {step}/{self.total} ({step / self.total:.0%}): loss {logs['loss']:.4f}{rate}")
        if "tokens_per_second" in logs:
            fields["rate"] = f"{logs['tokens_per_second']:,.0f}"
        if "eval_loss" in logs:
            fields["val"] = f"{logs['eval_loss']:.3f}"
            # The starting point is measured before training starts, when the step count is not known yet.
            where = f"step {step}/{self.total}" if self.started else ("base model" if not self.phases else
                                                                    "start of the next phase")
            self.line(f"  {where}: validation loss {logs['eval_loss']:.4f}")
        self.update(**fields)


class EvalProgress(ProgressView):
    """eval: a bar per contender over the prompts it must generate; off a terminal, a line
    every tenth."""

    def start(self, label: str, total: int) -> None:
        self.open_bar(label, total, TextColumn("{task.completed}/{task.total}"))
        self.label, self.total, self.done, self.tenth, self.started = label, total, 0, 0, time.perf_counter()

    def advance(self, n: int) -> None:
        self.update(advance=n)
        self.done += n
        tenth = int(10 * self.done / max(self.total, 1))
        if tenth > self.tenth:
            self.tenth = tenth
            self.line(f"  {self.label}: {self.done}/{self.total} ({time.perf_counter() - self.started:.0f}s)")


class OpenAIFollow(ProgressView):
    """train (OpenAI): the live view of a fine-tuning job: status, steps, the latest losses, the
    checkpoints and the recent events; off a terminal, a line per status change, event and
    tenth of the steps."""

    COLORS = {"validating_files": "yellow", "queued": "yellow", "running": "cyan", "succeeded": "green",
              "failed": "red", "cancelled": "red"}

    def __init__(self) -> None:
        super().__init__()
        self.live: Any = None
        self.current: dict[str, Any] | None = None
        self.recent: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self.last_status: str | None = None
        self.last_tenth = -1

    def estimate(self, e: dict[str, Any]) -> None:
        self.print(Text(f"OpenAI estimate for {e['model']}: {e['billed_tokens']:,} billed tokens ({e['epochs']} "
                        f"epochs, {e['epochs_source']}, x {e['tokens_per_epoch']:,} tokens of {e['examples']} examples) "
                        f"~ ${e['estimated_cost']:.2f} at ${e['price_per_million_tokens']:g}/1M tokens "
                        f"(counted with {e['tokenizer']})"))
        if e["over_max_tokens"]:
            self.print(Text.assemble(("warning: ", "yellow"), f"{e['over_max_tokens']} examples exceed the per-example "
                                                              "token limit and will be truncated"))

    def note(self, text: str) -> None:
        self.print(Text(f"  {text}"))

    def retry(self, what: str, attempt: int, max_retries: int, wait: float, reason: str) -> None:
        self.print(Text.assemble(("  retry ", "yellow"), f"{what}: {reason}; again in {wait:.1f}s "
                                                         f"({attempt}/{max_retries})"))

    def job(self, job: dict[str, Any], new_events: list[dict[str, Any]], checkpoints: list[dict[str, Any]]) -> None:
        self.current, self.checkpoints = job, checkpoints
        for event in new_events:
            if event.get("type") == "metrics" and isinstance(event.get("data"), dict):
                self.metrics = event["data"]
        self.recent = (self.recent + [e for e in new_events if e.get("type") != "metrics"])[-6:]
        if self.on_terminal():
            self._show_live()
        else:
            self._log_lines(job, new_events)
        self.last_status = job["status"]

    def _show_live(self) -> None:
        if self.live is None:
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=4)
            self.live.start()
        else:
            self.live.update(self._render())

    def _log_lines(self, job: dict[str, Any], new_events: list[dict[str, Any]]) -> None:
        if job["status"] != self.last_status:
            self.print(Text(f"  job {job['id']}: {job['status']}"))
        for event in new_events:
            data = event.get("data") or {}
            if event.get("type") == "metrics" and isinstance(data, dict):
                total = data.get("total_steps") or 0
                tenth = int(10 * data.get("step", 0) / total) if total else 0
                if tenth > self.last_tenth or data.get("step") == total:
                    self.last_tenth = tenth
                    self.print(Text(f"  {self._losses(data)}"))
            else:
                self.print(Text(f"  [{event.get('level', 'info')}] {event.get('message', '')}"))

    @staticmethod
    def _losses(m: dict[str, Any]) -> str:
        text = f"step {m.get('step')}/{m.get('total_steps', '?')}"
        for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss"),
                           ("full_valid_loss", "full valid loss")):
            if isinstance(m.get(key), (int, float)):
                text += f"  {label} {m[key]:.4f}"
        return text

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        job = self.current or {}
        status = job.get("status", "?")
        elapsed = int(time.monotonic() - self.started)
        rows: list[Any] = [Text.assemble(("OpenAI job ", "bold"), f"{job.get('id')}  ",
                                         (status, self.COLORS.get(status, "white")),
                                         f"  {job.get('model')}  {elapsed // 60}m{elapsed % 60:02d}s")]
        m = self.metrics
        if m.get("total_steps"):
            grid = Table.grid(padding=(0, 1))
            grid.add_row(ProgressBar(total=m["total_steps"], completed=m.get("step", 0), width=40),
                         Text(self._losses(m)))
            rows.append(grid)
        if self.checkpoints:
            rows.append(self._checkpoint_table())
        for event in self.recent:
            style = {"warn": "yellow", "error": "red"}.get(event.get("level", ""), "dim")
            rows.append(Text(f"  {event.get('message', '')}", style=style))
        return Group(*rows)

    def _checkpoint_table(self) -> Any:
        from rich.table import Table

        def fmt(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

        table = Table("checkpoint step", "train loss", "valid loss", "full valid loss", "model", box=None,
                      header_style="bold")
        for c in self.checkpoints:
            cm = c.get("metrics") or {}
            table.add_row(str(c["step_number"]), fmt(cm.get("train_loss")), fmt(cm.get("valid_loss")),
                          fmt(cm.get("full_valid_loss")), c["fine_tuned_model_checkpoint"])
        return table

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
