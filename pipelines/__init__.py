"""refit: RAG failure logs in, fine-tuned models that are proven better out.

One module per stage (curate, split, ...), read top to bottom as a recipe; `cli` wires them
to the `refit` command.
"""

__version__ = "0.1.0"
