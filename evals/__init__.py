"""refit's evaluation: the runner, metrics, gate and guard suites (see DESIGN.md)."""
