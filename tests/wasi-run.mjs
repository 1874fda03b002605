// Runs a wasm32-wasip1 test binary under Node's own WASI (`make wasm-test` sets it as cargo's
// runner), so the filter's pure code is tested on the very target Envoy loads, with no tool to
// install beyond Node. Usage: node tests/wasi-run.mjs <test.wasm> [libtest args...]
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const imports = wasi.getImportObject();
// The library links the proxy-wasm adapter, whose host calls a test never makes: any call fails.
imports.env = new Proxy({}, {
  get: (_, name) => () => { throw new Error(`host call ${String(name)} made in a test`); },
});
const instance = await WebAssembly.instantiate(module, imports);
// The adapter also exports the reactor's `_initialize`, which WASI.start refuses next to `_start`;
// the test harness needs only `_start` and the memory.
const { memory, _start } = instance.exports;
process.exitCode = wasi.start({ exports: { memory, _start } });
