#!/usr/bin/env bash
# The scheduled retrain: `make retrain` in this checkout, exiting with refit's own exit code
# (make turns every failure into 2) so a scheduler can act on it:
#    0  promoted, nothing new, or not enough new data (the summary says which)
#    3  gate failed: the candidate is registered, the champion is unchanged
#   75  another retrain of this pipeline holds the lock (its pid and start time are printed)
#    1  error (the summary's message says what; re-running resumes where it stopped)
#    2  bad config (or make itself failed)
# The run's summary: artifacts/retrain/<pipeline>/last.json (and summaries.jsonl); one line on stdout.
#
# Environment (all optional):
#   CONFIG                 the pipeline YAML (default: pipelines/configs/default.yaml)
#   MLFLOW_TRACKING_URI    a shared MLflow server (default: the SQLite file in artifacts/)
#   REFIT_WEBHOOK_URL      where to POST the summary (retrain.webhook in the config says when)
#   REFIT_USER             who the audit log names for alias moves (default: the OS user)
#   REFIT_CACHE_DIR        where the converted base model is cached (default: ~/.cache/refit)
#   OPENAI_API_KEY         for the openai backend (set train.openai.assume_yes: true to let a
#                          scheduled run start paid jobs) and for OpenAI eval contenders
#   MAKE                   the make to run (default: make)
set -uo pipefail
cd "$(dirname "$0")/.."
code_file=$(mktemp "${TMPDIR:-/tmp}/refit-retrain-exit.XXXXXX")
trap 'rm -f "$code_file"' EXIT
# In the background, so that a SIGTERM (a scheduler's stop, a pod's eviction) reaches make,
# which passes it to refit: refit records the run as interrupted; the next run resumes.
REFIT_EXIT_CODE_FILE="$code_file" "${MAKE:-make}" --no-print-directory retrain \
    CONFIG="${CONFIG:-pipelines/configs/default.yaml}" &
child=$!
trap 'kill -TERM "$child" 2> /dev/null' TERM INT
wait "$child"
status=$?
while kill -0 "$child" 2> /dev/null; do  # wait returned early for the signal; let it finish
    wait "$child"
    status=$?
done
code=$(cat "$code_file" 2> /dev/null)
exit "${code:-$status}"
