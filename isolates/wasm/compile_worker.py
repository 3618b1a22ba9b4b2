"""Compiles one untrusted WebAssembly module in a process of its own (`ModuleCache`'s worker).

Compiling is where a module can cost the most before any of its code runs: Cranelift's time and
memory grow with the size of a function, and a 6 MB module of one function took 23 s and 1 GB
to compile on the development VM (its limit is 64 MiB). So the server never compiles a request's
module itself. It runs `python -m isolates.wasm.compile_worker OUT CPU_S MEMORY_BYTES` with the
module on stdin; this process sets those CPU-time and address-space limits on itself before it
reads the module (not `preexec_fn`, which is unsafe in the threaded server), and the server
loads the serialized result from OUT. A module past the limits kills only this process.

Exit status: 0 compiled (OUT written), 2 the module does not compile (the reason on stderr).
"""

from __future__ import annotations

import resource
import sys

import wasmtime

from isolates.wasm.engine import engine_config


def main() -> int:
    """Compile stdin's module into the file named by argv[1]; return the exit status."""
    out, cpu_s, memory_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    module_bytes = sys.stdin.buffer.read()
    engine = wasmtime.Engine(engine_config())
    try:
        module = wasmtime.Module(engine, module_bytes)
    except wasmtime.WasmtimeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    with open(out, "wb") as file:
        file.write(bytes(module.serialize()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
