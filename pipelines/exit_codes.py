"""The exit codes of every `refit` command, in one table, so a scheduler can tell a bad config
from a crash from a refused promotion."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # the stage could not run (a missing input, a failed job, a registry error)
EXIT_CONFIG = 2  # a bad config, a bad --set, or bad usage
EXIT_GATE_FAILED = 3  # eval ran and the candidate did not pass the gate; promote refused to move champion
EXIT_LOCKED = 75  # retrain: another run of this pipeline holds the lock (EX_TEMPFAIL: try later)
EXIT_DETACHED = 130  # train --backend openai: Ctrl-C detached from a job that keeps running

# `refit retrain`: each outcome of a run and the exit code it ends with.
RETRAIN_EXIT_CODES = {"promoted": EXIT_OK, "nothing_new": EXIT_OK, "not_enough_new_data": EXIT_OK,
                      "gate_failed": EXIT_GATE_FAILED, "locked": EXIT_LOCKED, "error": EXIT_ERROR}
