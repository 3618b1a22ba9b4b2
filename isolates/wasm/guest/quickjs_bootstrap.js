// Evaluated once at build time, as an ES module, by QuickJS's `qjs -m -e`; the memory it
// leaves is the snapshot every JavaScript isolate starts from (isolates/wasm/quickjs_snapshot.py).
// It installs what `qjs --std` would (std and os as globals) plus sandboxd's request plumbing,
// and defines __sandboxd_main, which the host calls once per isolate: it reads the request from
// CONTROL_FD (served by the host), evaluates the code as a classic script with an indirect
// eval, and returns once no tracked timer is left. CONTROL_FD and GUEST_CWD are substituted.
import * as std from 'qjs:std';
import * as os from 'qjs:os';

const __env = {};
const __timers = new Set();
const __setTimeout = os.setTimeout;
const __clearTimeout = os.clearTimeout;
let __wake = null;
let __failure = null;
const __fire = () => { const wake = __wake; __wake = null; if (wake !== null) wake(); };
const setTimeout = (fn, ms = 0, ...args) => {
  const handle = __setTimeout(() => {
    __timers.delete(handle);
    try { fn(...args); } catch (error) { __failure ??= { error }; }
    __fire();
  }, ms);
  __timers.add(handle);
  return handle;
};
const clearTimeout = (handle) => {
  if (__timers.delete(handle)) { __clearTimeout(handle); __fire(); }
};
const sleepAsync = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The snapshot would freeze QuickJS's own Math.random state, so every isolate would draw the
// same numbers: Math.random is xoshiro128** seeded per execution by the host instead.
const __rng = new Uint32Array(4);
const __rotl = (x, k) => (x << k) | (x >>> (32 - k));
const __next32 = () => {
  const s = __rng;
  const result = Math.imul(__rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
  const t = s[1] << 9;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t; s[3] = __rotl(s[3], 11);
  return result;
};
Object.defineProperty(Math, 'random', {
  value: function random() { return ((__next32() >>> 5) * 67108864 + (__next32() >>> 6)) / 9007199254740992; },
  writable: true, configurable: true, enumerable: false,
});

globalThis.std = { ...std, getenv: (name) => __env[name], getenviron: () => ({ ...__env }) };
globalThis.os = { ...os, setTimeout, clearTimeout, sleepAsync };
globalThis.setTimeout = setTimeout;
globalThis.clearTimeout = clearTimeout;
globalThis.process = { env: __env, argv: [] };
os.chdir(GUEST_CWD);

Object.defineProperty(globalThis, '__sandboxd_main', {
  value: async () => {
    const control = std.fdopen(CONTROL_FD, 'r');
    const head = control.getline();
    if (head === null) return;
    const [env, argv, seed, code] = JSON.parse(control.readAsString(+head));
    __rng.set(seed);
    Object.assign(__env, env);
    globalThis.process.argv = argv;
    globalThis.scriptArgs = argv;
    (0, eval)(code);
    for (;;) {
      // Let QuickJS run every pending job and poll its event loop once: the host reports
      // CONTROL_FD readable at once, so this never waits.
      await new Promise((resolve) => os.setReadHandler(CONTROL_FD, () => {
        os.setReadHandler(CONTROL_FD, null);
        resolve();
      }));
      if (__failure !== null || __timers.size === 0) break;
      await new Promise((resolve) => { __wake = resolve; });
    }
    if (__failure !== null) throw __failure.error;
  },
  writable: false, configurable: false, enumerable: false,
});
