// Runs a wasm32-wasip1 test binary under Node's own WASI (`make wasm-test` sets it as cargo's
// runner), so the filter's pure code is tested on the very target Envoy loads, with no tool to
// install beyond Node. Usage: node tests/wasi-run.mjs <test.wasm> [libtest args...]
// The binary links the pure library only (the proxy-wasm adapter is a crate of its own), so it
// imports nothing but WASI: a host call in the library would fail here, at instantiation.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
