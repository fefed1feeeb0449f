"""What the CLI tests share: a small, fast run's flags and a way to call the CLI in-process."""
from __future__ import annotations

import cli

SMALL = ["--device", "cpu", "--model", "mlp", "--train-size", "160", "--test-size", "64", "--batch-size", "32", "--quiet"]


def run(argv, capsys):
    """cli.main(argv) → (exit code, stdout, stderr)."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
