"""A local server that speaks the part of OpenAI's API refit uses, with fault injection; run it
with scripts/openai_server.py (whose docstring documents the API it serves and its settings)."""
