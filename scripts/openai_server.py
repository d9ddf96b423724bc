"""A local HTTP server that speaks the part of OpenAI's API refit uses, with fault injection.

No machine here reaches OpenAI, and a monkeypatched client proves nothing about HTTP. This
server implements, over real HTTP and with the real API's shapes, what refit's OpenAI backend
and its evaluation call:

    POST /v1/files                      multipart upload (purpose=fine-tune), checked like the real one
    GET  /v1/files, /v1/files/{id}      list (cursor pagination) and retrieve
    GET  /v1/files/{id}/content         result files (fine-tune inputs cannot be downloaded, as on the API)
    POST /v1/fine_tuning/jobs           create a supervised or dpo job (method, hyperparameters incl. dpo's
                                        beta, suffix, seed, metadata); its files are validated by the method
    GET  /v1/fine_tuning/jobs           list, newest first, filtered by metadata[key]=value
    GET  /v1/fine_tuning/jobs/{id}      retrieve; the job moves validating_files -> queued -> running ->
                                        succeeded (or failed) on a clock
    GET  /v1/fine_tuning/jobs/{id}/events       info and metrics events, newest first, `after` cursor
    GET  /v1/fine_tuning/jobs/{id}/checkpoints  one per epoch (the last three), with metrics
    POST /v1/fine_tuning/jobs/{id}/cancel
    POST /v1/chat/completions           ft: models answer with the assistant turn of the training or
                                        validation example whose prompt matches exactly; anything else
                                        gets a fixed fallback; `usage` counts tokens
    GET  /v1/models/{id}                the model object, with shutdown_date (models: settings below)
    GET  /_debug/state                  jobs created, files, requests per route (no key needed)

Every /v1 request needs `Authorization: Bearer <key>` (any key, or one of `api_keys`); errors
have the API's shape {"error": {"message", "type", "param", "code"}}.

Faults come from a YAML/JSON file or a dict: a 429 with Retry-After, a 5xx, a slow response, a
dropped connection (the socket closes without a response, before or after the request was
handled) on the Nth request to a route, and jobs that fail with an error {code, message, param}.

    python scripts/openai_server.py --port 0 --faults faults.yaml     # prints its base URL

    faults.yaml:
      jobs: {validating_s: 0.2, queued_s: 0.2, running_s: 2.0,
             fail: {nth: [1], at: 0.5, code: server_error, message: "Internal error", param: null}}
      chat: {latency_s: 0.05, fallback: "I don't know based on the provided documents."}
                                       # (or top-level chat_latency_s / chat_fallback)
      faults:
        - {route: "POST /v1/fine_tuning/jobs", nth: 1, status: 429, retry_after: 1}
        - {route: "GET /v1/fine_tuning/jobs/{id}", nth: [2, 3], status: 500}
        - {route: "GET /v1/fine_tuning/jobs/{id}/events", nth: 1, delay_s: 3}
        - {route: "POST /v1/files", nth: 2, drop: after}

Every key (all optional):
    api_keys: [..]          accepted keys (default: any non-empty key); others get the API's 401
    organization: name      the org in fine-tuned model names ft:<model>:<org>:<suffix>:<id>
    base_models: [..]       models that can be fine-tuned (default: any); others get a 400
    speed: 1.0              job clock seconds per real second
    seed: null              ids and job seeds (null: different on every start)
    jobs.validating_s / queued_s / running_s    how long each status lasts (1, 1, 6)
    jobs.metrics_events     at most this many metrics events per job (40), plus one per epoch
    jobs.fail               {nth: [..] or all, at: share of steps (0: while validating),
                             code, message, param}: jobs that fail with that error
    models                  {<model id>: {shutdown_date: YYYY-MM-DD, retired: true}}: a retired model
                            is a 404 on /v1/models/{id}; a job for a model past its date is a 400
    blocked_organization    true: every job creation is a 403 (the org may no longer fine-tune)
    chat.latency_s          fixed latency of each chat completion (0; requests run concurrently)
    chat.fallback           the answer to prompts no training or validation example has
    faults[]                route ("METHOD /v1/path" as listed above, or "*"), nth (1-based
                            request numbers on that route, or all; default 1), and one or more of:
                            status (+ retry_after seconds, retry_after_ms, code, message),
                            delay_s (answer late), drop: before | after (close the socket without
                            an answer, before or after the request took effect)

In tests, `serve(config)` runs it on a free loopback port in a thread and yields a handle with
the base URL and the live state (`jobs_created`, `requests`, `pause()`, `resume()`).

The code is the openai_fake package beside this script: settings (this format), api (routes,
errors, pagination), files, jobs (creation and the job state machine), chat, faults, state (the
lock, the clock, ids) and server (HTTP).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (HERE, REPO):  # openai_fake lives here; it checks uploads with pipelines/openai_format.py
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from openai_fake.server import Server, make_server, serve  # noqa: E402
from openai_fake.settings import ConfigError, Settings, load_settings  # noqa: E402

__all__ = ["ConfigError", "Server", "Settings", "load_settings", "make_server", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (the URL is printed)")
    parser.add_argument("--faults", "--config", dest="config", help="YAML or JSON: jobs, chat, faults, ...")
    parser.add_argument("--speed", type=float, help="job clock speed (overrides the config)")
    parser.add_argument("--url-file", help="also write the base URL to this file once listening")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        httpd, state = make_server(args.config, args.host, args.port, args.verbose)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.speed:
        state.settings.speed = args.speed
    url = f"http://{args.host}:{httpd.server_address[1]}/v1"
    if args.url_file:  # written before the URL is printed: either means "listening"
        tmp = Path(args.url_file + ".tmp")
        tmp.write_text(url + "\n")
        tmp.replace(args.url_file)
    print(url, flush=True)

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
