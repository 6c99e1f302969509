/**
 * Competitors of gemkit's matmul kernel, timed in the same process as bench/bench.ts:
 *
 * - jax-js (`npm:@jax-js/jax@0.1.25`) on its WebGPU device,
 * - TensorFlow.js (`npm:@tensorflow/tfjs-core@4.22.0` + `npm:@tensorflow/tfjs-backend-webgpu@4.22.0`)
 *   on its WebGPU backend,
 * - PyTorch on the CPU through `/usr/bin/python3 bench/torch_matmul.py` (1 and 2 threads).
 *
 * None of the functions throws: a library that cannot load, initialise, run, or that computes a
 * wrong result gives a Timing with `times_ms: []` and a `note` that says why (with the real
 * error). The libraries are imported lazily, so a missing package only affects its own entry.
 *
 * What one figure in `times_ms` is, for the two WebGPU libraries: inputs A and B (n x n fp32,
 * uniform in [-1, 1), from a seeded PRNG) are uploaded once, outside the timed region. Then each
 * sample is
 *
 *     t0 = performance.now()
 *     `inner` back-to-back C = A @ B calls through the library's public API (each result is
 *       released as soon as it is dispatched; the library reuses its buffer for the next one)
 *     read back one element, C[0][0], of the last result and await it (the only CPU<->GPU sync)
 *     t1 = performance.now()
 *     figure = (t1 - t0) / inner        (ms per matmul; the ~11.5 ms sync is amortised, not
 *                                        subtracted)
 *
 * - jax-js: each matmul is dispatched with `await np.matmul(a.ref, b.ref).gpuBuffer()` (jax-js
 *   is lazy; `gpuBuffer()` is its public call that submits pending work without waiting for it
 *   and hands the GPUBuffer out). The sync copies 4 bytes of the last result's buffer into a
 *   MAP_READ buffer on jax-js's own GPUDevice (`getWebGPUDevice()`) and awaits `mapAsync`.
 * - tfjs: each matmul is `tf.matMul(a, b)` (eager: recorded into tfjs's command encoder and
 *   submitted in tfjs's usual batches), disposed at once. The sync is
 *   `await tf.slice(last, [0, 0], [1, 1]).data()`, so it includes one 1-element slice kernel.
 *
 * Each of the `warmup` untimed runs is one whole sample (inner matmuls + the sync) whose time is
 * discarded. Before any timing, one product is read back in full and 8 entries are checked
 * against an fp64 dot product on the CPU; the single element read in every sample is checked
 * against the expected C[0][0] too. Library start-up (adapter, device, shader compiles) happens
 * on the first call and is never timed.
 *
 * Memory: every array/tensor made here is disposed before returning (jax-js refcounts, tfjs
 * `dispose`; the tfjs tensor count is checked). Both libraries keep freed GPU buffers in their own
 * pools for reuse, which this module cannot empty through their public APIs.
 */

/** One competitor at one size. `times_ms` is empty when it did not run; `note` says why. */
export interface Timing {
  impl: string;
  n: number;
  times_ms: number[];
  note?: string;
  /** Whether the result was checked against a CPU dot product and matched. */
  verified?: boolean;
  /** Backend that actually ran it, e.g. "webgpu (llvmpipe (LLVM 15.0.6, 256 bits))". */
  backend?: string;
}

export interface TimingOptions {
  /** Untimed samples before the timed ones (each is `inner` matmuls + one sync). */
  warmup: number;
  /** Timed samples recorded in `times_ms`. */
  repeats: number;
  /** Back-to-back matmuls per sample; one sync per sample. */
  inner: number;
}

export interface TorchOptions extends TimingOptions {
  /** Thread counts to run, one python process each; default [1, 2]. */
  threads?: number[];
  /** Python interpreter; default /usr/bin/python3 (the one that has Debian's PyTorch). */
  python?: string;
  /** Also run once on the GPU through CUDA (impl "torch-cuda"); default false. */
  cuda?: boolean;
}

/** Where PyTorch runs in the benches. */
export interface TorchSetup {
  python: string;
  threads: number[];
  cuda: boolean;
}

/**
 * PyTorch's setup from the environment, so that a GPU machine (its own python, 16 cores,
 * CUDA) runs the same benches: GEMKIT_PYTHON (default /usr/bin/python3, Debian's PyTorch),
 * GEMKIT_TORCH_THREADS (comma-separated CPU thread counts, default "1,2"; "" for none) and
 * GEMKIT_TORCH_CUDA=1 (add a run on the GPU).
 */
export function torchSetup(env: { get(key: string): string | undefined } = Deno.env): TorchSetup {
  const raw = env.get("GEMKIT_TORCH_THREADS") ?? "1,2";
  const threads = raw.trim() === "" ? [] : raw.split(",").map((x) => Number(x.trim()));
  if (!threads.every((t) => Number.isInteger(t) && t >= 1)) {
    throw new Error(`GEMKIT_TORCH_THREADS: expected thread counts like "1,2", got "${raw}"`);
  }
  const cuda = env.get("GEMKIT_TORCH_CUDA") ?? "0";
  if (cuda !== "0" && cuda !== "1") {
    throw new Error(`GEMKIT_TORCH_CUDA: expected 0 or 1, got "${cuda}"`);
  }
  return { python: env.get("GEMKIT_PYTHON") || "/usr/bin/python3", threads, cuda: cuda === "1" };
}

/** Exact versions; keep in sync with the literal specifiers in the `import()` calls below. */
export const VERSIONS = {
  jaxjs: "@jax-js/jax@0.1.25",
  tfjsCore: "@tensorflow/tfjs-core@4.22.0",
  tfjsWebgpu: "@tensorflow/tfjs-backend-webgpu@4.22.0",
} as const;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/** Deterministic uniform [-1, 1) fp32 data (mulberry32), so results can be checked on the CPU. */
export function randomMatrix(n: number, seed: number): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n * n);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1;
  }
  return out;
}

/** fp64 dot of row i of A with column j of B, and the sum of |products| (for the tolerance). */
function refEntry(a: Float32Array, b: Float32Array, n: number, i: number, j: number) {
  let sum = 0;
  let abs = 0;
  for (let k = 0; k < n; k++) {
    const p = a[i * n + k] * b[k * n + j];
    sum += p;
    abs += Math.abs(p);
  }
  // fp32 accumulation error is far below this; a wrong result (transposed operand, stale buffer,
  // partial tile) is off by O(sqrt(n)).
  return { value: sum, tol: 1e-4 * abs + 1e-6 };
}

interface Check {
  ok: boolean;
  maxErr: number;
  msg: string;
}

/** Compares 8 entries of the full product `c` (row-major n x n) with fp64 dot products. */
function checkProduct(a: Float32Array, b: Float32Array, c: ArrayLike<number>, n: number): Check {
  if (c.length !== n * n) {
    return { ok: false, maxErr: NaN, msg: `result has ${c.length} elements, expected ${n * n}` };
  }
  const idx: [number, number][] = [[0, 0], [n - 1, n - 1], [0, n - 1], [n - 1, 0]];
  for (let k = 1; k <= 4; k++) idx.push([(k * 7919) % n, (k * 104729 + 13) % n]);
  let maxErr = 0;
  for (const [i, j] of idx) {
    const ref = refEntry(a, b, n, i, j);
    const got = c[i * n + j];
    const err = Math.abs(got - ref.value);
    if (!(err <= ref.tol)) {
      return {
        ok: false,
        maxErr: err,
        msg: `RESULT CHECK FAILED at C[${i}][${j}]: got ${got}, expected ${ref.value} ` +
          `(tol ${ref.tol.toExponential(2)})`,
      };
    }
    maxErr = Math.max(maxErr, err);
  }
  return {
    ok: true,
    maxErr,
    msg: `verified 8 entries vs CPU fp64 dot (max abs err ${maxErr.toExponential(2)})`,
  };
}

function errText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

function badOptions(n: number, opts: TimingOptions): string | null {
  if (!Number.isInteger(n) || n < 1) return `bad size n=${n}`;
  for (const k of ["warmup", "repeats", "inner"] as const) {
    const v = opts?.[k];
    if (!Number.isInteger(v) || v < (k === "inner" ? 1 : 0)) return `bad option ${k}=${v}`;
  }
  return null;
}

/**
 * Runs `warmup` untimed then `repeats` timed samples; each sample returns C[0][0] from its sync
 * read, which is checked against `expect00`.
 */
async function sampleLoop(
  opts: TimingOptions,
  expect00: { value: number; tol: number },
  sample: () => Promise<number>,
): Promise<number[]> {
  const times: number[] = [];
  for (let r = 0; r < opts.warmup + opts.repeats; r++) {
    const t0 = performance.now();
    const v = await sample();
    const t1 = performance.now();
    if (!(Math.abs(v - expect00.value) <= expect00.tol)) {
      throw new Error(
        `RESULT CHECK FAILED in timed loop: C[0][0] read ${v}, expected ${expect00.value}`,
      );
    }
    if (r >= opts.warmup) times.push((t1 - t0) / opts.inner);
  }
  return times;
}

function adapterName(device: GPUDevice | undefined): string {
  // GPUDevice.adapterInfo is newer than some type libs; read it defensively.
  const info = (device as unknown as { adapterInfo?: GPUAdapterInfo } | undefined)?.adapterInfo;
  return info?.description || info?.vendor || "unknown adapter";
}

// ---------------------------------------------------------------------------------------------
// jax-js

type JaxModule = typeof import("npm:@jax-js/jax@0.1.25");

let jaxReady: Promise<{ jax: JaxModule; device: GPUDevice; backend: string }> | null = null;

function jaxInit() {
  jaxReady ??= (async () => {
    // deno-lint-ignore no-import-prefix -- pinned inline: deno.json is not ours to edit
    const jax: JaxModule = await import("npm:@jax-js/jax@0.1.25");
    const devices = await jax.init("webgpu");
    if (!devices.includes("webgpu")) {
      throw new Error(
        `jax-js init("webgpu") gave [${devices.join(", ")}]: no WebGPU backend ` +
          `(navigator.gpu=${typeof navigator !== "undefined" && !!navigator.gpu})`,
      );
    }
    const device = jax.getWebGPUDevice();
    return { jax, device, backend: `webgpu (${adapterName(device)})` };
  })();
  // A failed start is retried on the next call instead of being cached.
  jaxReady.catch(() => (jaxReady = null));
  return jaxReady;
}

/** Times square fp32 n x n matmul in jax-js (@jax-js/jax) on WebGPU. */
export async function jaxjsMatmul(n: number, opts: TimingOptions): Promise<Timing> {
  const impl = "jax-js";
  const bad = badOptions(n, opts);
  if (bad) return { impl, n, times_ms: [], note: bad };
  let st;
  try {
    st = await jaxInit();
  } catch (e) {
    return { impl, n, times_ms: [], note: `jax-js could not start on WebGPU: ${errText(e)}` };
  }
  const { jax, device, backend } = st;
  const np = jax.numpy;
  const ha = randomMatrix(n, 1);
  const hb = randomMatrix(n, 2);
  let a: InstanceType<JaxModule["Array"]> | null = null;
  let b: InstanceType<JaxModule["Array"]> | null = null;
  const staging = device.createBuffer({
    size: 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    label: "competitors.jaxjs.readback",
  });
  try {
    a = np.array(ha, { shape: [n, n], device: "webgpu" });
    b = np.array(hb, { shape: [n, n], device: "webgpu" });
    const c0 = np.matmul(a.ref, b.ref);
    if (c0.device !== "webgpu") {
      c0.dispose();
      throw new Error(`matmul ran on "${c0.device}", not webgpu`);
    }
    const check = checkProduct(ha, hb, await c0.data(), n); // data() consumes c0
    if (!check.ok) return { impl, n, times_ms: [], note: check.msg, verified: false, backend };

    const A = a;
    const B = b;
    const sample = async (): Promise<number> => {
      for (let i = 0; i < opts.inner - 1; i++) {
        // Submits the matmul without waiting; gpuBuffer() consumes the result reference.
        await np.matmul(A.ref, B.ref).gpuBuffer();
      }
      const last = np.matmul(A.ref, B.ref);
      try {
        const buf = await last.ref.gpuBuffer();
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(buf, 0, staging, 0, 4);
        device.queue.submit([enc.finish()]);
        await staging.mapAsync(GPUMapMode.READ);
        const v = new Float32Array(staging.getMappedRange(0, 4))[0];
        staging.unmap();
        return v;
      } finally {
        last.dispose();
      }
    };
    const times = await sampleLoop(opts, refEntry(ha, hb, n, 0, 0), sample);
    return {
      impl,
      n,
      times_ms: times,
      verified: true,
      backend,
      note: `jax-js ${VERSIONS.jaxjs.split("@").pop()} on ${backend}; ${check.msg}; ` +
        `sample = ${opts.inner} x np.matmul dispatched via gpuBuffer() + 4-byte readback of ` +
        `C[0][0], figure = sample/${opts.inner}`,
    };
  } catch (e) {
    return { impl, n, times_ms: [], note: `jax-js failed: ${errText(e)}`, backend };
  } finally {
    a?.dispose();
    b?.dispose();
    staging.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// TensorFlow.js

type TfModule = typeof import("npm:@tensorflow/tfjs-core@4.22.0");

let tfReady: Promise<{ tf: TfModule; backend: string }> | null = null;

function tfInit() {
  tfReady ??= (async () => {
    // deno-lint-ignore no-import-prefix -- pinned inline: deno.json is not ours to edit
    const tf: TfModule = await import("npm:@tensorflow/tfjs-core@4.22.0");
    // Registers the "webgpu" backend when globalThis.navigator.gpu exists (no shims needed).
    // deno-lint-ignore no-import-prefix -- pinned inline: deno.json is not ours to edit
    await import("npm:@tensorflow/tfjs-backend-webgpu@4.22.0");
    // Never hand small ops to CPU code paths inside the WebGPU backend.
    tf.env().set("WEBGPU_CPU_FORWARD", false);
    let ok = false;
    try {
      ok = await tf.setBackend("webgpu");
    } catch (e) {
      throw new Error(`tf.setBackend("webgpu") threw: ${errText(e)}`);
    }
    await tf.ready();
    if (!ok || tf.getBackend() !== "webgpu") {
      throw new Error(
        `tf.setBackend("webgpu") gave ${ok}, active backend ${tf.getBackend()}; ` +
          `registered: [${Object.keys(tf.engine().registryFactory).join(", ")}]`,
      );
    }
    const device = (tf.backend() as unknown as { device?: GPUDevice }).device;
    return { tf, backend: `webgpu (${adapterName(device)})` };
  })();
  tfReady.catch(() => (tfReady = null));
  return tfReady;
}

/** Same as jaxjsMatmul, for @tensorflow/tfjs-core with @tensorflow/tfjs-backend-webgpu. */
export async function tfjsMatmul(n: number, opts: TimingOptions): Promise<Timing> {
  const impl = "tfjs";
  const bad = badOptions(n, opts);
  if (bad) return { impl, n, times_ms: [], note: bad };
  let st;
  try {
    st = await tfInit();
  } catch (e) {
    return { impl, n, times_ms: [], note: `tfjs could not start on WebGPU: ${errText(e)}` };
  }
  const { tf, backend } = st;
  const ha = randomMatrix(n, 1);
  const hb = randomMatrix(n, 2);
  const tensorsBefore = tf.memory().numTensors;
  let a: ReturnType<TfModule["tensor2d"]> | null = null;
  let b: ReturnType<TfModule["tensor2d"]> | null = null;
  try {
    if (tf.getBackend() !== "webgpu") throw new Error(`active backend is ${tf.getBackend()}`);
    a = tf.tensor2d(ha, [n, n], "float32");
    b = tf.tensor2d(hb, [n, n], "float32");
    const c0 = tf.matMul(a, b);
    let full: Float32Array;
    try {
      full = (await c0.data()) as Float32Array;
    } finally {
      c0.dispose();
    }
    const check = checkProduct(ha, hb, full, n);
    if (!check.ok) return { impl, n, times_ms: [], note: check.msg, verified: false, backend };

    const A = a;
    const B = b;
    const sample = async (): Promise<number> => {
      for (let i = 0; i < opts.inner - 1; i++) tf.matMul(A, B).dispose();
      const last = tf.matMul(A, B);
      const one = tf.slice(last, [0, 0], [1, 1]);
      last.dispose();
      try {
        return (await one.data())[0] as number;
      } finally {
        one.dispose();
      }
    };
    const times = await sampleLoop(opts, refEntry(ha, hb, n, 0, 0), sample);
    a.dispose();
    b.dispose();
    a = b = null;
    const leaked = tf.memory().numTensors - tensorsBefore;
    return {
      impl,
      n,
      times_ms: times,
      verified: true,
      backend,
      note: `tfjs ${tf.version_core} on ${backend}; ${check.msg}; sample = ${opts.inner} x ` +
        `tf.matMul + await slice(C,[0,0],[1,1]).data(), figure = sample/${opts.inner}` +
        (leaked !== 0 ? `; WARNING: ${leaked} tfjs tensors leaked` : ""),
    };
  } catch (e) {
    return { impl, n, times_ms: [], note: `tfjs failed: ${errText(e)}`, backend };
  } finally {
    a?.dispose();
    b?.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// PyTorch (CPU, separate process)

interface TorchResult {
  impl: string;
  n: number;
  threads: number;
  times_ms: number[];
  verified: boolean;
  note: string;
}

/**
 * PyTorch CPU through `/usr/bin/python3 bench/torch_matmul.py`. Runs one python process per
 * thread count (default 1 and 2; OPENBLAS/OMP/MKL_NUM_THREADS set to match, and the script calls
 * torch.set_num_threads and openblas_set_num_threads). Returns one Timing per (thread count,
 * size), impl "torch-cpu-<t>t", in thread-major order, then with `cuda` one per size on the GPU
 * (impl "torch-cuda", TF32 off). When python or torch is missing, returns
 * one Timing per size with `times_ms: []` and note "PyTorch not available: <reason>". Never
 * throws. Timing: each sample is `inner` x torch.mm(a, b, out=c), figure = sample / inner.
 */
export async function torchMatmul(sizes: number[], opts: TorchOptions): Promise<Timing[]> {
  const threads = opts.threads ?? [1, 2];
  const python = opts.python ?? "/usr/bin/python3";
  const unavailable = (why: string, prefix = "PyTorch not available"): Timing[] =>
    sizes.map((n) => ({ impl: "torch-cpu", n, times_ms: [], note: `${prefix}: ${why}` }));
  if (sizes.length === 0) return [];
  for (const n of sizes) {
    const bad = badOptions(n, opts);
    if (bad) return unavailable(bad, "PyTorch not run");
  }
  if (!threads.every((t) => Number.isInteger(t) && t >= 1)) {
    return unavailable(`bad thread counts [${threads.join(", ")}]`, "PyTorch not run");
  }
  let script: string;
  try {
    const url = new URL("./torch_matmul.py", import.meta.url);
    if (url.protocol !== "file:") throw new Error(`module is not a local file (${url.href})`);
    script = decodeURIComponent(url.pathname);
  } catch (e) {
    return unavailable(`cannot locate torch_matmul.py: ${errText(e)}`);
  }

  const out: Timing[] = [];
  const runs = [
    ...threads.map((t) => ({ t, device: "cpu" })),
    ...(opts.cuda ? [{ t: 1, device: "cuda" }] : []),
  ];
  for (const { t, device } of runs) {
    const arg = JSON.stringify({
      sizes,
      warmup: opts.warmup,
      repeats: opts.repeats,
      inner: opts.inner,
      threads: [t],
      device,
    });
    // A failed run for one thread count is reported per size and the next count still runs;
    // python or torch missing ends it for all.
    const failed = (why: string): Timing[] =>
      sizes.map((n) => ({
        impl: device === "cuda" ? "torch-cuda" : `torch-cpu-${t}t`,
        n,
        times_ms: [],
        note: `PyTorch run failed: ${why}`,
      }));
    let stdout: string, stderr: string, code: number;
    try {
      const res = await new Deno.Command(python, {
        args: [script, arg],
        env: {
          OMP_NUM_THREADS: String(t),
          OPENBLAS_NUM_THREADS: String(t),
          MKL_NUM_THREADS: String(t),
        },
        stdout: "piped",
        stderr: "piped",
        stdin: "null",
      }).output();
      stdout = new TextDecoder().decode(res.stdout);
      stderr = new TextDecoder().decode(res.stderr);
      code = res.code;
    } catch (e) {
      return unavailable(`cannot run ${python}: ${errText(e)}`);
    }
    const lastLine = stdout.trim().split("\n").pop() ?? "";
    let parsed: { ok?: boolean; error?: string; results?: TorchResult[]; blas?: string };
    try {
      parsed = JSON.parse(lastLine);
    } catch {
      out.push(...failed(
        `${python} ${script} exited ${code} without JSON; stderr: ` +
          (stderr.trim().split("\n").slice(-3).join(" | ") || "(empty)"),
      ));
      continue;
    }
    if (!parsed.ok || !parsed.results) {
      const why = parsed.error ?? `exit ${code}`;
      // Exit 3 = import torch failed; anything else is a failure of the run itself.
      if (code === 3 && device === "cpu") return unavailable(why);
      out.push(...failed(why));
      continue;
    }
    for (const r of parsed.results) {
      out.push({
        impl: r.impl,
        n: r.n,
        times_ms: r.times_ms,
        verified: r.verified,
        backend: device === "cuda" ? "cuda" : `cpu (${parsed.blas ?? "unknown BLAS"})`,
        note: r.note,
      });
    }
  }
  return out;
}
