"""papin's tests; the folders under ``tests/llm`` and ``tests/cli`` mirror the packages."""

from pathlib import Path

#: The tests folder (its ``data/`` holds stored files) and the repository around it.
TESTS = Path(__file__).parent
REPO = TESTS.parent
