"""Runs the shell commands that the READMEs document, and checks what they print.

A fenced ```sh block right after the line `<!-- ci: run -->` is executed (one marked
`<!-- ci: run http -->` needs the HTTP/JSON routes and runs only with --blocks http
or all). Within a block, each command (lines up to a blank or comment line) runs
in bash from the README's folder, with `localhost:50051` replaced by --addr; the
comment lines `# ...` right after a command are what it prints. The check: the
command exits 0 (non-zero when the expected output starts with `ERROR:`, as
grpcurl's errors do), and every expected line, with all whitespace removed,
occurs in the output, in order; `…` in an expected line stands for anything.

Prints `ok - FILE:LINE: COMMAND` or `not ok - …` per command and exits non-zero
if any failed. Usage:
    python3 scripts/readme_commands.py --addr 127.0.0.1:PORT [--blocks grpc|http|all] [FILE...]
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("examples/*/README.md"))]
MARKER = re.compile(r"^<!--\s*ci:\s*run(?:\s+(http))?\s*-->\s*$")
DOCUMENTED_ADDR = "localhost:50051"


def blocks(path: pathlib.Path):
    """Yields (kind, first line number, lines) for every marked ```sh block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i].strip())
        i += 1
        if not marker:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or lines[i].strip() != "```sh":
            raise SystemExit(f"{path}:{i}: `<!-- ci: run -->` is not followed by a ```sh block")
        start = i + 2
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        yield ("http" if marker.group(1) else "grpc"), start, body


def commands(start: int, body: list):
    """Splits a block into (line number, command text, expected output lines)."""
    found = []
    command, expected, line_no = [], [], start
    for offset, line in enumerate(body + [""]):
        if not line.strip():
            if command:
                found.append((line_no, "\n".join(command), expected))
            command, expected = [], []
        elif line.lstrip().startswith("#"):
            if command:
                expected.append(re.sub(r"^\s*# ?", "", line))
        else:
            if expected:  # a new command right after the previous one's output
                found.append((line_no, "\n".join(command), expected))
                command, expected = [], []
            if not command:
                line_no = start + offset
            command.append(line)
    return found


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def check_output(expected: list, output: str):
    """None if every expected fragment occurs in order, else what is missing."""
    haystack, at = squeeze(output), 0
    for line in expected:
        for fragment in squeeze(line).split("…"):
            if not fragment:
                continue
            found = haystack.find(fragment, at)
            if found < 0:
                return f"expected output not found (in order): {line.strip()!r}, missing {fragment!r}"
            at = found + len(fragment)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="the gateway's HOST:PORT, replacing localhost:50051")
    parser.add_argument("--blocks", choices=["grpc", "http", "all"], default="grpc")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per command")
    parser.add_argument("files", nargs="*", default=DEFAULT_FILES)
    args = parser.parse_args()

    failed = ran = 0
    for name in args.files:
        path = (ROOT / name).resolve()
        for kind, start, body in blocks(path):
            if args.blocks != "all" and kind != args.blocks:
                continue
            for line_no, command, expected in commands(start, body):
                ran += 1
                title = f"{os.path.relpath(path, ROOT)}:{line_no}: {command.splitlines()[0].strip()}"
                script = "set -eo pipefail\n" + command.replace(DOCUMENTED_ADDR, args.addr)
                try:
                    done = subprocess.run(
                        ["bash", "-c", script],
                        cwd=path.parent,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        timeout=args.timeout,
                    )
                    output, code = done.stdout, done.returncode
                except subprocess.TimeoutExpired as timed_out:
                    output = timed_out.stdout or ""
                    if isinstance(output, bytes):
                        output = output.decode(errors="replace")
                    code = None
                wants_error = bool(expected) and expected[0].strip().startswith("ERROR:")
                if code is None:
                    why = f"still running after {args.timeout:.0f} s"
                elif wants_error and code == 0:
                    why = "exit status 0, but the README shows an error"
                elif not wants_error and code != 0:
                    why = f"exit status {code}"
                else:
                    why = check_output(expected, output)
                if why is None:
                    print(f"ok - {title}")
                else:
                    failed += 1
                    print(f"not ok - {title}")
                    shown = script.split("\n", 1)[1] + "\n--- output:\n" + output.rstrip() + f"\n--- {why}"
                    print("\n".join("    # " + line for line in shown.splitlines()))
    if ran == 0:
        print(f"not ok - no `<!-- ci: run -->` command found for --blocks {args.blocks}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
