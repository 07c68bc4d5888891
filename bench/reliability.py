"""Run the reliability suites and print the summary table of docs/reliability.md.

    .venv/bin/python -m bench.reliability            # prints a markdown table
    .venv/bin/python -m bench.reliability --write    # also replaces the table in docs/reliability.md

Each row counts the scenarios (test cases) of one area that ran and passed: registry faults injected
through the fault proxy, cache verification, interrupted builds, concurrent builds, hostile layers,
property tests, secrets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AREAS = (
    ("registry faults injected and survived or cleanly refused", "tests/registry/test_faults_proxy.py"),
    ("registry faults from a fake server", "tests/registry/test_faults.py"),
    ("cache verify / --repair", "tests/registry/test_faults_verify.py"),
    ("builds killed (SIGINT, SIGKILL) during pull and output", "tests/integration/test_interrupts.py"),
    ("concurrent builds sharing one cache", "tests/integration/test_concurrent_builds.py"),
    ("hostile layers refused or contained", "tests/unit/test_hostile_layers.py"),
    ("hostile image configs and labels", "tests/unit/test_image_config.py"),
    ("property tests over specs and labels", "tests/unit/test_spec_properties.py"),
    ("secrets kept out of logs, errors and images", "tests/unit/test_secrets.py"),
)
BEGIN, END = "<!-- reliability-summary:begin -->", "<!-- reliability-summary:end -->"


def run_area(path: str) -> tuple[int, int]:
    """(cases run, cases passed) of one test file."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        path], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        root = ET.parse(report).getroot()
    cases = list(root.iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None
              or c.find("skipped") is not None]
    return len(cases), len(cases) - len(failed)


def table() -> str:
    lines = ["| area | scenarios run | passed |", "|---|---:|---:|"]
    for title, path in AREAS:
        ran, passed = run_area(path)
        lines.append(f"| {title} (`{path}`) | {ran} | {passed} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in docs/reliability.md")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.write:
        doc = REPO / "docs" / "reliability.md"
        content = doc.read_text()
        start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
        doc.write_text(content[:start] + "\n" + text + "\n" + content[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
