"""Behaviour of wasm JavaScript (QuickJS-NG) isolates against real wasmtime."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    InputFile,
    Language,
    Limits,
    Status,
)
from isolates.wasm import JavaScriptFactory, ensure_runtimes
from isolates.wasm.prefault import private_pages, to_ranges


@pytest.fixture(scope="module")
def factory(data_dir: Path) -> Iterator[JavaScriptFactory]:
    ensure_runtimes(data_dir, progress=False)
    yield JavaScriptFactory(data_dir)


def run(factory: JavaScriptFactory, code: str, **fields: object) -> ExecutionResult:
    isolate = factory.create()
    try:
        return isolate.run(
            ExecutionRequest(execution_id="t", language=Language.JAVASCRIPT, code=code, **fields)  # type: ignore[arg-type]
        )
    finally:
        isolate.destroy()


def test_console_log(factory: JavaScriptFactory) -> None:
    result = run(factory, "console.log(6 * 7, 'answer', [1, 2])")
    assert (result.status, result.exit_code, result.stdout) == (Status.OK, 0, b"42 answer 1,2\n")
    assert result.stdout_total_bytes == len(result.stdout)


def test_sloppy_script_semantics(factory: JavaScriptFactory) -> None:
    result = run(factory, "x = 5; var y = 2; function f() { return this === globalThis }\n"
                 "console.log(x + globalThis.y, f())")
    assert result.stdout == b"7 true\n", result.stderr


def test_uncaught_exception_is_error_with_message(factory: JavaScriptFactory) -> None:
    result = run(factory, "console.log('before');\nthrow new TypeError('boom')")
    assert (result.status, result.exit_code) == (Status.ERROR, 1)
    assert result.message == "TypeError: boom"
    assert b"TypeError: boom" in result.stderr
    assert result.stdout == b"before\n"


def test_syntax_error(factory: JavaScriptFactory) -> None:
    result = run(factory, "let = = 1")
    assert result.status is Status.ERROR and "SyntaxError" in result.message


def test_exit_code(factory: JavaScriptFactory) -> None:
    assert (run(factory, "std.exit(3)").exit_code, run(factory, "std.exit(0)").status) == (
        3,
        Status.OK,
    )


def test_promises_and_timers_run(factory: JavaScriptFactory) -> None:
    code = (
        "Promise.resolve(1).then(v => console.log('then', v));\n"
        "(async () => { await null; console.log('async') })();\n"
        "setTimeout(() => console.log('timer'), 5);\n"
        "const h = setTimeout(() => console.log('cancelled timer'), 1); clearTimeout(h);"
    )
    result = run(factory, code)
    assert result.stdout == b"then 1\nasync\ntimer\n", result.stderr


def test_rejection_handled_by_catch_is_not_an_error(factory: JavaScriptFactory) -> None:
    code = "Promise.reject(new Error('x')).catch(e => console.log('caught', e.message))"
    result = run(factory, code)
    assert (result.status, result.stdout) == (Status.OK, b"caught x\n")


def test_env_stdin_argv(factory: JavaScriptFactory) -> None:
    code = "console.log(process.env.A, std.getenv('A'), std.in.readAsString(), process.argv)"
    result = run(factory, code, env={"A": "b"}, stdin=b"input")
    assert result.stdout == b"b b input main.js\n", result.stderr


def test_files_in_and_out(factory: JavaScriptFactory) -> None:
    code = (
        "const data = std.loadFile('in.txt');\n"
        "const f = std.open('out.txt', 'w'); f.puts(data.toUpperCase()); f.close();\n"
        "console.log(os.getcwd()[0])"
    )
    result = run(
        factory,
        code,
        files=(InputFile(path="in.txt", content=b"hello"),),
        output_paths=("out.txt",),
    )
    assert result.status is Status.OK, result.stderr
    assert result.stdout == b"/workspace\n"
    assert result.files[0].content == b"HELLO"


def test_infinite_loop_times_out(factory: JavaScriptFactory) -> None:
    result = run(factory, "while (true) {}", limits=Limits(timeout_s=0.2))
    assert result.status is Status.TIMEOUT and "wall-time limit" in result.message


def test_long_timer_and_sleep_time_out(factory: JavaScriptFactory) -> None:
    for code in ("setTimeout(() => {}, 1e9)", "os.sleep(1e9)"):
        result = run(factory, code, limits=Limits(timeout_s=0.2))
        assert result.status is Status.TIMEOUT, code


def test_memory_limit(factory: JavaScriptFactory) -> None:
    code = "const a = []; while (true) a.push(new Array(1e6).fill(1.5));"
    result = run(factory, code, limits=Limits(memory_bytes=64 << 20))
    assert result.status is Status.MEMORY_LIMIT
    assert "memory limit" in result.message


def test_output_limit(factory: JavaScriptFactory) -> None:
    code = "while (true) console.log('z'.repeat(99))"
    result = run(factory, code, limits=Limits(output_bytes=1000))
    assert result.status is Status.OUTPUT_LIMIT
    assert result.stdout == b"z" * 99 + b"\n" + (b"z" * 99 + b"\n") * 9
    assert result.stdout_truncated and result.stdout_total_bytes > 1000


def test_streaming_and_cancel(factory: JavaScriptFactory) -> None:
    isolate = factory.create()
    token = CancelToken()
    chunks: list[tuple[str, bytes]] = []
    started = threading.Event()

    def on_output(stream: str, chunk: bytes) -> None:
        chunks.append((stream, chunk))
        started.set()

    request = ExecutionRequest(
        execution_id="t",
        language=Language.JAVASCRIPT,
        code="console.log('started'); while (true) {}",
        limits=Limits(timeout_s=60),
    )
    holder: list[ExecutionResult] = []
    worker = threading.Thread(
        target=lambda: holder.append(isolate.run(request, on_output=on_output, cancel=token))
    )
    worker.start()
    assert started.wait(30)
    token.cancel()
    worker.join(30)
    isolate.destroy()
    assert holder[0].status is Status.CANCELLED
    assert chunks[0] == ("stdout", b"started\n")


def test_instances_are_isolated(factory: JavaScriptFactory) -> None:
    run(factory, "globalThis.leak = 1; const f = std.open('mine', 'w'); f.close()")
    result = run(factory, "console.log(typeof leak, os.readdir('.')[0].filter(n => n[0] !== '.'))")
    assert result.stdout == b"undefined \n"


def test_unhandled_rejection_is_error(factory: JavaScriptFactory) -> None:
    result = run(factory, "console.log('a'); Promise.reject(new Error('nobody caught'))")
    assert (result.status, result.exit_code, result.stdout) == (Status.ERROR, 1, b"a\n")
    assert "unhandled promise rejection" in result.message
    assert "nobody caught" in result.message


def test_exception_in_timer_is_error(factory: JavaScriptFactory) -> None:
    result = run(factory, "setTimeout(() => { throw new RangeError('late') }, 1)")
    assert (result.status, result.message) == (Status.ERROR, "RangeError: late")


def test_microtasks_after_the_last_timer_run(factory: JavaScriptFactory) -> None:
    code = "setTimeout(async () => { await null; await null; console.log('late') }, 1)"
    assert run(factory, code).stdout == b"late\n"


def test_sleep_async_is_awaited(factory: JavaScriptFactory) -> None:
    code = "(async () => { await os.sleepAsync(2); console.log('slept') })()"
    assert run(factory, code).stdout == b"slept\n"


def test_unicode_code_and_output(factory: JavaScriptFactory) -> None:
    result = run(factory, "console.log('héllo ☃', '\\u{1F600}'.length)")
    assert result.stdout == "héllo ☃ 2\n".encode()


def test_created_isolates_hold_no_thread_and_cancel_before_running(
    factory: JavaScriptFactory,
) -> None:
    before = threading.active_count()
    isolates = [factory.create() for _ in range(5)]
    assert threading.active_count() == before
    cancelled = CancelToken()
    cancelled.cancel()
    request = ExecutionRequest(execution_id="t", language=Language.JAVASCRIPT, code="1")
    assert isolates[0].run(request, cancel=cancelled).status is Status.CANCELLED
    assert isolates[1].run(request).status is Status.OK
    for isolate in isolates:
        isolate.destroy()
        isolate.destroy()


def test_math_random_is_seeded_per_isolate(factory: JavaScriptFactory) -> None:
    code = "const xs = Array.from({length: 1000}, Math.random); " \
           "console.log(xs.every(x => x >= 0 && x < 1), new Set(xs).size, xs[0])"
    outputs = [run(factory, code).stdout.split() for _ in range(3)]
    assert all(out[:2] == [b"true", b"1000"] for out in outputs), outputs
    assert len({out[2] for out in outputs}) == 3


def test_each_run_sets_its_own_memory_limit(factory: JavaScriptFactory) -> None:
    code = "const a = new Uint8Array(40 << 20); console.log(a.length)"
    assert run(factory, code, limits=Limits(memory_bytes=32 << 20)).status is Status.MEMORY_LIMIT
    result = run(factory, code, limits=Limits(memory_bytes=128 << 20))
    assert (result.status, result.stdout) == (Status.OK, b"41943040\n")


def test_a_trapped_isolate_frees_its_store_at_once(factory: JavaScriptFactory) -> None:
    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, wasmtime.Store) for o in gc.get_objects())
        assert run(factory, "std.exit(3)").exit_code == 3
        assert sum(isinstance(o, wasmtime.Store) for o in gc.get_objects()) == before
    finally:
        gc.enable()


def test_pooled_isolates_start_with_a_runs_pages_copied_and_unchanged(
    factory: JavaScriptFactory,
) -> None:
    written = factory.written_pages()
    assert written, "a sample run writes pages, and /proc/self/pagemap shows them"
    pooled, fresh = factory.create(), factory.create_for_immediate_use()
    try:
        copied = private_pages(pooled.memory, pooled.store)
        assert {page for start, end in written for page in range(start, end)} <= copied
        assert not private_pages(fresh.memory, fresh.store)
        size = pooled.memory.data_len(pooled.store)
        # Copying breaks copy-on-write only: not one byte of the snapshot changes.
        assert pooled.memory.read(pooled.store, 0, size) == fresh.memory.read(fresh.store, 0, size)
        request = ExecutionRequest(execution_id="t", language=Language.JAVASCRIPT,
                                   code="console.log(6 * 7)")
        assert pooled.run(request).stdout == fresh.run(request).stdout == b"42\n"
    finally:
        pooled.destroy()
        fresh.destroy()


def test_page_ranges_merge_neighbours() -> None:
    assert to_ranges({7, 3, 4, 5, 9, 10}) == ((3, 6), (7, 8), (9, 11))
    assert to_ranges(set()) == ()
