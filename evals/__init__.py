"""refit's evaluation: the runner, metrics, gate and guard suites (README, "Evaluation and the gate")."""
