/**
 * What gemkit needs from the JavaScript runtime it runs on (Deno, Bun or Node), in one place:
 * the process (arguments, environment, exit, signals, terminal), the runtime's name and version,
 * WebGPU, and which Mesa driver serves it. File and process I/O elsewhere use `node:` built-ins,
 * which all three runtimes provide, so nothing else in src/ names a runtime.
 *
 * WebGPU: Deno has it built in (`navigator.gpu`, wgpu); Bun and Node get it from the npm package
 * `webgpu` (Dawn). Dawn refuses Mesa 22's lavapipe, so on those runtimes the Mesa 25 driver that
 * `scripts/setup.sh` unpacks is selected (see {@link dawnDriver}) unless the user chose one.
 */

import process from "node:process";
import { existsSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The runtime gemkit runs on. */
export type Runtime = "deno" | "bun" | "node";

declare const Bun: { version: string } | undefined;

/** Which runtime this is. */
export const RUNTIME: Runtime = "Deno" in globalThis
  ? "deno"
  : typeof Bun !== "undefined"
  ? "bun"
  : "node";

/** "deno 2.9.6", "bun 1.4.5" or "node 20.20.2". */
export function runtimeVersion(): string {
  const v = process.versions as Record<string, string | undefined>;
  return `${RUNTIME} ${v[RUNTIME] ?? process.version.replace(/^v/, "")}`;
}

/** The command-line arguments after the script. */
export function args(): string[] {
  return process.argv.slice(2);
}

/** An environment variable, or undefined when unset (or when the runtime denies access). */
export function env(name: string): string | undefined {
  try {
    return process.env[name];
  } catch {
    return undefined;
  }
}

/** Sets an environment variable for this process and the libraries it loads later. */
export function setEnv(name: string, value: string): void {
  try {
    process.env[name] = value;
  } catch {
    // Without permission to write the environment the defaults stay.
  }
}

/** Ends the process with `code`. */
export function exit(code: number): never {
  process.exit(code);
}

/** Whether standard error is a terminal (progress bars) rather than a file or a pipe. */
export function stderrIsTerminal(): boolean {
  return !!process.stderr.isTTY;
}

/** Writes text to standard error without a newline, at once. */
export function writeStderr(text: string): void {
  process.stderr.write(text);
}

/** Calls `fn` on SIGINT / SIGTERM; returns the function that stops listening. */
export function onSignal(signal: "SIGINT" | "SIGTERM", fn: () => void): () => void {
  process.on(signal, fn);
  return () => void process.off(signal, fn);
}

/**
 * The command line that runs the TypeScript module `script` in a new process of this runtime,
 * with every permission: `[executable, ...arguments]`, the script's own arguments to follow
 * (`deno run -A script` under Deno, `bun script` under Bun, `node script` under Node).
 */
export function scriptCommand(script: string): [string, ...string[]] {
  return RUNTIME === "deno" ? [process.execPath, "run", "-A", script] : [process.execPath, script];
}

/**
 * Whether the module whose `import.meta` is given is the program's entry point. Deno and Bun
 * say so in `import.meta.main`; Node (running a bundle from `dist/node`) does not, so there the
 * script path is compared with the module's.
 */
export function isMain(meta: ImportMeta): boolean {
  const main = (meta as { main?: boolean }).main;
  if (main !== undefined) return main;
  return !!process.argv[1] && fileURLToPath(meta.url) === process.argv[1];
}

/**
 * The gemkit checkout this code runs from: the nearest folder above this module holding
 * `deno.json`. Found by walking up rather than by a fixed `../..`, so the same answer comes from
 * `src/` and from a bundle in `dist/node/`.
 */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "deno.json"))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`gemkit: no deno.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** gemkit's version, from the checkout's deno.json. */
export function gemkitVersion(): string {
  return JSON.parse(readFileSync(join(projectRoot(), "deno.json"), "utf8")).version;
}

/** Whether an error is a file system's "no such file or directory". */
export function isNotFound(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === "ENOENT";
}

/** Exit code of a finished child process: its own, or 128 + the signal's number, as a shell says. */
export function exitCode(code: number | null, signal: string | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (constants.signals as Record<string, number>)[signal] ?? 0 : 0);
}

/** The operating system: "linux", "darwin", "win32", ... */
export const OS: string = process.platform;

/** CPU cores available to this process. */
export function cores(): number {
  return (globalThis.navigator as { hardwareConcurrency?: number } | undefined)
    ?.hardwareConcurrency || 2;
}

/** Where the Mesa 25 Vulkan driver unpacked by scripts/setup.sh lives (for Dawn). */
export const DAWN_MESA_DIR = "/opt/gemkit/mesa-25.0.7";

/**
 * The Vulkan driver manifest Dawn should use: the user's VK_ICD_FILENAMES / VK_DRIVER_FILES, else
 * the Mesa 25 lavapipe that scripts/setup.sh unpacks (Dawn rejects Mesa 22's), else none.
 */
export function dawnDriver(): string | undefined {
  const chosen = env("VK_ICD_FILENAMES") ?? env("VK_DRIVER_FILES");
  if (chosen) return chosen;
  const icd = `${DAWN_MESA_DIR}/lvp_icd.json`;
  return existsSync(icd) ? icd : undefined;
}

/**
 * The `navigator.gpu` of this runtime: Deno's own, or Dawn's from the npm package `webgpu`, whose
 * constants (GPUBufferUsage, ...) are then installed as globals as a browser has them.
 * Undefined when the runtime has none.
 */
export async function webgpu(): Promise<GPU | undefined> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (RUNTIME === "deno") return undefined;
  const driver = dawnDriver();
  if (driver && !env("VK_ICD_FILENAMES") && !env("VK_DRIVER_FILES")) {
    setEnv("VK_ICD_FILENAMES", driver);
  }
  if (RUNTIME === "bun") await exportEnvToNative();
  // A computed specifier: Deno never loads this package, so its checker must not resolve it.
  const name = "webgpu";
  const mod = await import(name) as {
    create(options: string[]): GPU;
    globals: Record<string, unknown>;
  };
  Object.assign(globalThis, mod.globals);
  dawn ??= mod.create([]);
  return dawn;
}

/**
 * Dawn's instance, held for the life of the process: the adapter and device do not keep it
 * alive, and once the garbage collector frees it, Dawn's event processing locks a freed mutex
 * (a crash at the first readback after enough allocation).
 */
let dawn: GPU | undefined;

/**
 * Bun keeps `process.env` to itself: native libraries (the Vulkan loader, llvmpipe) read the C
 * environment, which assignments to it do not reach. Copies it there with libc's setenv, so the
 * driver and vector width chosen above apply to Dawn too.
 */
async function exportEnvToNative(): Promise<void> {
  const ffiName = "bun:ffi";
  const ffi = await import(ffiName);
  const libc = ffi.dlopen("libc.so.6", {
    setenv: { args: ["ptr", "ptr", "i32"], returns: "i32" },
  });
  const c = (s: string) => new TextEncoder().encode(`${s}\0`);
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined) libc.symbols.setenv(c(k), c(v), 1);
  }
}

/**
 * The version of Mesa's lavapipe driver that Vulkan loads here ("22.3.6", "25.0.7-2~bpo12+1"),
 * read from the driver library named by the manifest in use; null when there is none.
 * Compile times and kernel choices depend on it, and records name it.
 */
export function mesaVersion(): string | null {
  try {
    const chosen = RUNTIME === "deno"
      ? env("VK_ICD_FILENAMES") ?? env("VK_DRIVER_FILES")
      : dawnDriver();
    const manifests = chosen
      ? chosen.split(":")
      : ["/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", "/usr/share/vulkan/icd.d/lvp_icd.json"];
    for (const m of manifests) {
      if (!existsSync(m)) continue;
      const lib: string = JSON.parse(readFileSync(m, "utf8")).ICD?.library_path ?? "";
      const path = lib.startsWith("/") ? lib : `/usr/lib/x86_64-linux-gnu/${lib}`;
      if (!existsSync(path)) continue;
      // Searched as bytes, by the typed array's native indexOf: decoding the whole library
      // (7-10 MB) cost 50-190 ms per start-up.
      const b = readFileSync(path);
      const bytes = new Uint8Array(b.buffer, b.byteOffset, b.byteLength); // not Buffer's indexOf
      const ascii = (at: number) => String.fromCharCode(...bytes.subarray(at, at + 64));
      for (let at = bytes.indexOf(0x4d); at >= 0; at = bytes.indexOf(0x4d, at + 1)) {
        if (bytes[at + 1] !== 0x65 || bytes[at + 2] !== 0x73 || bytes[at + 3] !== 0x61) continue;
        const v = /^Mesa (\d+\.\d+\.\d+[^\s)"\0]*)/.exec(ascii(at));
        if (v) return v[1];
      }
    }
  } catch {
    // Unreadable manifests or libraries: unknown.
  }
  return null;
}
