"""The `sandboxd` command line: serve, run, bench, health.

`serve` and `bench` import the server and benchmark packages only when invoked, so the SDK
itself never depends on them; `run` and `health` import the client only when invoked, which
keeps it off the server's start-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxd import __version__
from sandboxd._target import DEFAULT_TARGET

if TYPE_CHECKING:
    from sandboxd._models import Execution

__all__ = ["main"]

LANGUAGES = ("python", "javascript", "shell", "wasi", "command")
ISOLATES = ("auto", "wasm", "jail")
_EXTENSIONS = {".py": "python", ".js": "javascript", ".mjs": "javascript", ".sh": "shell",
               ".wasm": "wasi"}
EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    # Importing the client (grpc, pydantic) or the server allocates hundreds of thousands of
    # long-lived objects. The collector's passes over them, and its last one at exit, cost a
    # `sandboxd run -c 'print(1)'` 150-250 ms of 0.65-0.78 s. Each command turns it back on
    # once its imports are done, with what they built frozen.
    gc.disable()
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read stdout has gone (`sandboxd run --json ... | head`): stop quietly, as
        # `cat` does, with the status of a death by SIGPIPE. Output still buffered for the
        # closed pipe goes to /dev/null, so the interpreter's last flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandboxd",
        description="Secure code execution for AI agents: pre-warmed WebAssembly and "
        "nsjail isolates served over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the gRPC API",
                                description="Serve the gRPC API until SIGTERM/SIGINT.")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks one)")
    serve.add_argument("--metrics-port", type=int,
                       help="Prometheus /metrics port (default 9464; -1 disables)")
    serve.add_argument("--git-port", type=int,
                       help="git smart-HTTP port for artifact repos (default 8470; -1 disables)")
    serve.add_argument("--data-dir", type=Path, help="state directory (default ./.sandboxd)")
    serve.add_argument("--pool-wasm-python", type=int, metavar="N",
                       help="warm WebAssembly Python isolates")
    serve.add_argument("--pool-wasm-javascript", type=int, metavar="N",
                       help="warm WebAssembly JavaScript isolates")
    serve.add_argument("--pool-jail", type=int, metavar="N", help="warm jails")
    serve.add_argument("--no-jail", action="store_true", help="serve without JAIL isolates")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser("run", help="run code on a server",
                              description="Run a file or -c CODE; exits with the program's "
                              "exit code (124 on timeout, 1 on other failures).")
    run.add_argument("file", nargs="?", type=Path,
                     help="program file, - for standard input (or use -c)")
    run.add_argument("-c", dest="code", metavar="CODE",
                     help="program text; for --lang command, the command line (split like a shell)")
    run.add_argument("--lang", choices=LANGUAGES,
                     help="language (default: from the file extension, else python)")
    run.add_argument("--isolate", choices=ISOLATES, default="auto", help="isolate kind")
    run.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    run.add_argument("--memory", type=_byte_size, metavar="SIZE",
                     help="memory limit: bytes, or with a K, M or G suffix (binary: 512M)")
    run.add_argument("--cpu-time", type=float, metavar="S",
                     help="CPU-time limit in seconds, all processes counted (jail isolates)")
    run.add_argument("--file-in", action="append", default=[], metavar="PATH[=LOCAL]",
                     help="input file placed in the working directory, with the local "
                     "file's permission bits (repeatable)")
    run.add_argument("--output", action="append", default=[], metavar="PATH",
                     help="output file to return (repeatable); saved under --output-dir")
    run.add_argument("--output-dir", type=Path, default=Path("."),
                     help="where returned output files are written (default .)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="environment variable (repeatable)")
    run.add_argument("--stdin", action="store_true", help="pass this process's stdin")
    run.add_argument("--arg", action="append", default=[], metavar="ARG",
                     help="argv item for wasi modules and commands (repeatable)")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.add_argument("--target", default=os.environ.get("SANDBOXD_TARGET", DEFAULT_TARGET),
                     help=f"server address (default $SANDBOXD_TARGET or {DEFAULT_TARGET})")
    run.set_defaults(handler=_run)

    bench = commands.add_parser("bench", help="measure cold starts and throughput",
                                description="Run the benchmark suite and print a table.")
    bench.add_argument("--json", type=Path, metavar="FILE", help="write results as JSON")
    bench.add_argument("--plot", type=Path, metavar="FILE.png", help="write a bar chart")
    bench.add_argument("--data-dir", type=Path, help="state directory (default ./.sandboxd)")
    bench.add_argument("--quick", action="store_true", help="fewer iterations")
    bench.add_argument("--only", action="append", default=[], metavar="GROUP",
                       help="run only these groups (wasm, grpc, jail, artifacts, facets, "
                       "baseline)")
    bench.set_defaults(handler=_bench)

    health = commands.add_parser("health", help="check a server's health",
                                 description="Exit 0 when the server reports SERVING.")
    health.add_argument("--target", default=os.environ.get("SANDBOXD_TARGET", DEFAULT_TARGET),
                        help=f"server address (default {DEFAULT_TARGET})")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.set_defaults(handler=_health)
    return parser


def _serve(args: argparse.Namespace) -> int:
    # The collector stays off until the server has started (executor.server.serve): its passes
    # over the growing heap of imports took 80-95 ms of a start.
    import asyncio
    import logging

    from pydantic import ValidationError

    from executor.config import Settings
    from executor.event_loop import loop_factory
    from executor.isolate_setup import StartError
    from executor.server import serve

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "pool_wasm_python", "pool_wasm_javascript",
                 "pool_jail"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    for name in ("metrics_port", "git_port"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = None if value < 0 else value
    if args.no_jail:
        overrides["enable_jail"] = False
    try:
        settings = Settings.from_env(overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            print(f"sandboxd serve: {field}: {error['msg']}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(serve(settings), loop_factory=loop_factory(settings.event_loop))
    except StartError as exc:
        print(f"sandboxd serve: {exc}", file=sys.stderr)
        return EXIT_NOT_OK
    return 0


def _run(args: argparse.Namespace) -> int:
    if (args.code is None) == (args.file is None):
        print("sandboxd run: give a program file or -c CODE (not both)", file=sys.stderr)
        return EXIT_USAGE
    language = args.lang or _EXTENSIONS.get(args.file.suffix if args.file else "", "python")
    module: bytes | None = None
    code = args.code or ""
    if args.file is not None:
        from_stdin = str(args.file) == "-"
        if from_stdin and args.stdin:
            print("sandboxd run: standard input holds the program; it cannot also be --stdin",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            data = sys.stdin.buffer.read() if from_stdin else args.file.read_bytes()
        except OSError as exc:
            print(f"sandboxd run: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        if language == "wasi":
            module = data
        else:
            try:
                code = data.decode()
            except UnicodeDecodeError as exc:
                print(f"sandboxd run: {args.file} is not UTF-8 text (byte {data[exc.start]:#04x} "
                      f"at offset {exc.start})", file=sys.stderr)
                return EXIT_USAGE
    argv = list(args.arg)
    if language == "command" and args.code is not None and not argv:
        try:
            argv = shlex.split(args.code)
        except ValueError as exc:
            print(f"sandboxd run: -c: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        files, file_modes = _input_files(args.file_in)
        env = dict(_split_env(item) for item in args.env)
    except ValueError as exc:
        print(f"sandboxd run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stdin = sys.stdin.buffer.read() if args.stdin else None
    stream = not args.json

    def write_out(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    def write_err(chunk: str) -> None:
        sys.stderr.write(chunk)
        sys.stderr.flush()

    from sandboxd._client import Client
    from sandboxd._errors import InvalidArgumentError, SandboxdError

    _collect_from_here()
    try:
        with Client(args.target) as client:
            execution = client.run_code(
                code, language, timeout=args.timeout, files=files, file_modes=file_modes,
                env=env, stdin=stdin, isolate=args.isolate, memory=args.memory,
                cpu_time=args.cpu_time, output_paths=args.output or None,
                argv=argv or None, module=module,
                on_stdout=write_out if stream else None,
                on_stderr=write_err if stream else None,
            )
    except InvalidArgumentError as exc:
        if not exc.field_violations:
            print(f"sandboxd run: {exc.message}", file=sys.stderr)
        for violation in exc.field_violations:
            print(f"sandboxd run: {violation.field} {violation.description}", file=sys.stderr)
        return EXIT_USAGE
    except SandboxdError as exc:
        print(f"sandboxd run: {exc.message} (server {args.target})", file=sys.stderr)
        return EXIT_NOT_OK
    if args.json:
        payload = execution.model_dump(mode="json", exclude={"stdout_bytes", "stderr_bytes",
                                                             "files"})
        payload["files"] = [
            {"path": f.path, "size": f.size, "truncated": f.truncated, "error": f.error,
             "executable": f.executable}
            for f in execution.files
        ]
        print(json.dumps(payload, indent=2))
    for output in execution.files:
        if output.error:
            print(f"sandboxd run: output {output.path}: {output.error}", file=sys.stderr)
            continue
        target = args.output_dir / output.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(output.content)
        if output.executable:
            # As `chmod +x` would, and git on checkout: execute where it may be read.
            mode = target.stat().st_mode
            target.chmod(mode | (mode & 0o444) >> 2)
    status_line = _status_line(execution)
    if status_line is not None and not args.json:
        print(status_line, file=sys.stderr)
    if execution.status == "timeout":
        return EXIT_TIMEOUT
    if execution.exit_code:
        return execution.exit_code & 0xFF or EXIT_NOT_OK
    return 0 if execution.ok else EXIT_NOT_OK


def _status_line(execution: Execution) -> str | None:
    """Why the run did not end OK, unless the program's own stderr already says it.

    A program that exits non-zero or dies of an exception has spoken for itself, as under
    `python -c`; limits, cancellations and refusals are sandboxd's to explain.
    """
    if execution.status == "ok":
        return None
    message = execution.message
    if execution.status == "error" and (
        not message or execution.stderr.rstrip().endswith(message)
    ):
        return None
    return f"sandboxd run: {execution.status}: {message}".rstrip(": ")


def _input_files(items: list[str]) -> tuple[dict[str, bytes], dict[str, int]]:
    """--file-in items as run_code's `files` and `file_modes` (the local permission bits)."""
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for item in items:
        remote, _, local = item.partition("=")
        source = Path(local or remote)
        try:
            files[remote] = source.read_bytes()
            modes[remote] = source.stat().st_mode & 0o777
        except OSError as exc:
            raise ValueError(f"cannot read input file {source}: {exc.strerror}") from None
    return files, modes


_SIZE_SUFFIXES = {"K": 1024, "M": 1024**2, "G": 1024**3}


def _byte_size(text: str) -> int:
    """A size such as 268435456, 512M or 1G (binary multiples, as `ulimit` and docker read)."""
    digits, factor = text.strip(), 1
    if digits[-1:].upper() in _SIZE_SUFFIXES:
        digits, factor = digits[:-1], _SIZE_SUFFIXES[digits[-1].upper()]
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (e.g. 536870912 or 512M)")
    return int(digits) * factor


def _split_env(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"--env expects NAME=VALUE, got {item!r}")
    return name, value


def _bench(args: argparse.Namespace) -> int:
    from bench.harness import run_cli

    _collect_from_here()
    return run_cli(args)


def _health(args: argparse.Namespace) -> int:
    from sandboxd._client import Client
    from sandboxd._errors import SandboxdError

    _collect_from_here()
    try:
        with Client(args.target) as client:
            status = client.health(args.service)
    except SandboxdError as exc:
        print(f"sandboxd health: {args.target}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_OK
    print(status)
    return 0 if status == "SERVING" else EXIT_NOT_OK


def _collect_from_here() -> None:
    """Freeze what the imports built (the collector never walks it) and turn the collector on."""
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    sys.exit(main())
