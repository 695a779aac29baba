#!/usr/bin/env bash
# Apply the code checks' fixes (pyproject's [tool.ruff]) to the repository: the lint fixes ruff
# knows to be safe, then the formatter. What is left for a person, `ruff check .` lists after it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${RUFF:-.venv/bin/ruff}"
"$RUFF" check --fix --silent --exit-zero .
"$RUFF" format --quiet .
"$RUFF" check .
