/**
 * The device layer: one WebGPU device per process (the only global state in gemkit), its buffer
 * pool, its pipeline cache and the command recorder that batches dispatches.
 *
 * Batching matters: on llvmpipe every CPU<->GPU sync costs ~11.5 ms, so a forward or backward pass
 * records all its dispatches into one command encoder and nothing waits on the GPU until a caller
 * asks for data with `read`.
 */

import {
  cores,
  env,
  gemkitVersion,
  mesaVersion,
  OS,
  RUNTIME,
  runtimeVersion,
  setEnv,
  webgpu,
} from "../platform/platform.ts";
import { readFileSync } from "node:fs";
import {
  BindingLimitError,
  DisposedError,
  NoAdapterError,
  numberLines,
  ShaderError,
} from "./errors.ts";
import {
  type Access,
  defineKernel,
  type Kernel,
  type ParamWriter,
  texelLoad,
  type TextureRead,
} from "./kernel.ts";
import {
  BufferPool,
  BufferWindow,
  GpuBuffer,
  type GpuTexture,
  STORAGE_USAGE,
  TEXTURE_WIDTH,
  TexturePool,
} from "./pool.ts";
import {
  isLlvmpipe,
  type ProfileKey,
  selectTuning,
  type Tuning,
  tuningFor,
  tuningHash as hashTuning,
} from "./tuning.ts";

/** Bytes of the uniform ring used by one submit; more params than this force a flush. */
const UNIFORM_RING_BYTES = 1 << 20;
/** Bytes of one dispatch's Params slot: the uniform binding has a dynamic offset, fixed size. */
const UNIFORM_SLOT_BYTES = 512;
/** Bind groups kept for reuse; beyond this the cache starts over. */
const BIND_GROUP_CACHE = 8192;

/** Where the log of adapter facts goes; silenced with GEMKIT_LOG=0. */
function logLine(msg: string): void {
  if (env("GEMKIT_LOG") !== "0") console.error(msg);
}

/**
 * The family of a kernel name: its first two `_`-separated words, or one when the second starts
 * with a digit (`matmul_v3_8x8_w4` -> `matmul_v3`, `reduce_4` -> `reduce`).
 */
export function kernelFamily(name: string): string {
  const [a, b] = name.split("_");
  return b === undefined || /^[0-9]/.test(b) ? a : `${a}_${b}`;
}

/** Debug level from GEMKIT_DEBUG: 1 = extra checks, 2 = also print every new WGSL kernel. */
export function debugLevel(): number {
  return Number(env("GEMKIT_DEBUG") ?? "0") || 0;
}

/** The WebGPU device with its buffer pool, pipeline cache and command recorder. */
export class Gpu {
  /** Where every storage buffer comes from and goes back to. */
  readonly pool: BufferPool;
  /** Flat rgba32float textures for kernels that read operands as textures (llvmpipe matmul). */
  readonly textures: TexturePool;
  /** Kernel parameters chosen for this adapter; mutable for experiments and tests. */
  readonly tuning: Tuning;
  /** Where {@link tuning} came from: "built-in", "tuned PATH" (saved by `deno task tune`), "file PATH". */
  readonly tuningSource: string;
  /** Why a saved profile was not used, or what is odd about a pinned one; null when nothing. */
  readonly tuningWarning: string | null;
  /** What saved tuning profiles are keyed by (see src/gpu/tuning.ts). */
  readonly profileKey: ProfileKey;

  /** Hash of the tuning's current values (training state and records keep it). */
  get tuningHash(): string {
    return hashTuning(this.tuning);
  }
  /** Adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly description: string;
  /** Features granted on the device (shader-f16, timestamp-query when the adapter has them). */
  readonly features: ReadonlySet<string>;
  /** SIMD width of the adapter (llvmpipe: 8, or 16 with 512-bit vectors); kernels size to it. */
  readonly simdWidth: number;
  /**
   * Lanes per subgroup when kernels may use subgroup builtins (the device has the feature, the
   * size is fixed and a probe kernel compiles), else 0. Found by {@link initGpu}.
   */
  get subgroupSize(): number {
    return this.#subgroupSize;
  }
  #subgroupSize = 0;
  /** Whether this WGSL compiler wants `enable subgroups;` (Dawn) or rejects it (naga). */
  #subgroupDirective = false;
  /**
   * How kernels read textures: as read-only storage textures ("rtex") where the device takes
   * them and the tuning asks for it, else sampled ("tex"). The texels are the same either way.
   */
  get textureReads(): TextureRead {
    return this.tuning.storageTextureReads && this.#storageReads ? "rtex" : "tex";
  }
  #storageReads = false;
  /** CPU cores (llvmpipe's worker threads), for cost models. */
  readonly cores: number;
  /**
   * Most loop iterations one invocation of a kernel may run, all its loops counted together:
   * llvmpipe stops them there silently (measured on Mesa 22.3.6: a loop of 70,000 ran 65,535
   * times; two loops of 40,000 in a row ran 40,000 and 25,534; an inner loop of 30,000 in three
   * outer iterations 65,531 in all); fully unrolled loops do not count. Other adapters have no
   * such cap. Kernels that can loop long keep under half of it.
   */
  readonly loopLimit: number;
  /** Mesa's version when the adapter is llvmpipe ("22.3.6"), else null: compile costs differ. */
  readonly mesa: string | null;
  /**
   * Whether {@link read} returns only once the GPU has run everything submitted. Deno's WebGPU
   * (wgpu) waits for the queue inside the mapAsync call, then resolves the promise after a
   * fixed ~10 ms poll; a caller that needs the time of completion, not the bytes, takes it when
   * read() returns and awaits the promise later, while the next work runs. Dawn (Bun, Node)
   * returns at once.
   */
  readonly readWaitsForQueue: boolean;

  #pipelines = new Map<string, GPUComputePipeline>();
  #layouts = new Map<string, GPUBindGroupLayout>();
  #sources = new Map<string, string>();
  #errors: string[] = [];

  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  #uniformData = new ArrayBuffer(UNIFORM_RING_BYTES);
  #uniformView = new DataView(this.#uniformData);
  #uniformUsed = 0;
  #uniformBuffer: GPUBuffer;
  /** Bind groups by layout and buffer ids: creating one costs ~16 us on llvmpipe, reuse is free. */
  #bindGroups = new Map<string, GPUBindGroup>();
  #staging: GPUBuffer[] = [];
  /** Number of submits so far; a buffer used in the open encoder has `lastUse === epoch`. */
  epoch = 0;
  /** Dispatches recorded before an automatic submit (keeps llvmpipe busy while JS records). */
  maxDispatchesPerSubmit = 256;
  /** Counters for benchmarks and tests. */
  readonly stats = { dispatches: 0, submits: 0, reads: 0 };
  #unused: GpuBuffer | null = null;
  /** Open kernel profile ({@link Gpu.startProfile}), or null. */
  #profile: Profile | null = null;

  /** Wraps an acquired device; use {@link initGpu} rather than calling this. */
  constructor(readonly adapter: GPUAdapter, readonly device: GPUDevice) {
    this.pool = new BufferPool(device, () => this.#bindGroups.clear());
    this.textures = new TexturePool(device);
    this.description = adapter.info.description || adapter.info.vendor || "unknown adapter";
    this.features = new Set(device.features);
    this.simdWidth = adapter.info.subgroupMinSize || 8;
    this.cores = cores();
    this.loopLimit = isLlvmpipe(this.description) ? 65535 : Infinity;
    this.mesa = isLlvmpipe(this.description) ? mesaVersion() : null;
    this.readWaitsForQueue = runtimeVersion().startsWith("deno ");
    this.profileKey = {
      adapter: this.description,
      driver: this.mesa ?? ((adapter.info as { driver?: string }).driver || "unreported"),
      runtime: runtimeVersion(),
      gemkit: gemkitVersion(),
    };
    const chosen = selectTuning(tuningFor(this.description, this.mesa), this.profileKey);
    this.tuning = chosen.tuning;
    this.tuningSource = chosen.source;
    this.tuningWarning = chosen.warning;
    this.#uniformBuffer = device.createBuffer({
      size: UNIFORM_RING_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: "gemkit.uniforms",
    });
    device.addEventListener("uncapturederror", (ev) => {
      const msg = (ev as GPUUncapturedErrorEvent).error.message;
      this.#errors.push(this.#explain(msg));
      console.error(`gemkit: WebGPU error: ${this.#explain(msg)}`);
    });
  }

  /** Adds the numbered source of any kernel named in a WebGPU error message. */
  #explain(msg: string): string {
    for (const [name, src] of this.#sources) {
      if (msg.includes(name)) return `${msg}\nin kernel '${name}':\n${numberLines(src)}`;
    }
    return msg;
  }

  /** Throws the first WebGPU error reported since the last check, if any. */
  checkErrors(): void {
    if (this.#errors.length) {
      const first = this.#errors[0];
      this.#errors.length = 0;
      throw new ShaderError(first);
    }
  }

  #layout(buffers: readonly Access[]): GPUBindGroupLayout {
    const key = buffers.join(",");
    let layout = this.#layouts.get(key);
    if (!layout) {
      const entries: GPUBindGroupLayoutEntry[] = [
        {
          binding: 0,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform", hasDynamicOffset: true },
        },
      ];
      buffers.forEach((a, i) => {
        const e: GPUBindGroupLayoutEntry = { binding: i + 1, visibility: GPUShaderStage.COMPUTE };
        if (a === "tex") e.texture = { sampleType: "unfilterable-float", viewDimension: "2d" };
        else if (a === "rtex") e.storageTexture = { access: "read-only", format: "rgba32float" };
        else if (a === "stex") e.storageTexture = { access: "write-only", format: "rgba32float" };
        else e.buffer = { type: a === "rw" ? "storage" : "read-only-storage" };
        entries.push(e);
      });
      layout = this.device.createBindGroupLayout({ entries, label: `gemkit.layout(${key})` });
      this.#layouts.set(key, layout);
    }
    return layout;
  }

  /** The WGSL a kernel compiles from here: its source, with the directives this compiler needs. */
  #code(kernel: Kernel): string {
    if (kernel.subgroups && !this.subgroupSize) {
      throw new Error(`kernel '${kernel.name}' uses subgroup builtins this device lacks`);
    }
    return kernel.subgroups && this.#subgroupDirective
      ? `enable subgroups;\n${kernel.source}`
      : kernel.source;
  }

  /**
   * Finds whether subgroup builtins compile here, and with or without `enable subgroups;`
   * (see {@link Kernel.subgroups}): a probe kernel is compiled each way inside an error scope.
   * Called once by {@link initGpu} when the device has the feature and a fixed subgroup size.
   */
  async probeSubgroups(size: number): Promise<void> {
    const body = `@group(0) @binding(0) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(${size})
fn main(@builtin(subgroup_invocation_id) sid: u32) {
  o[sid] = subgroupBroadcast(f32(sid), 1u);
}`;
    for (const directive of [false, true]) {
      this.device.pushErrorScope("validation");
      const module = this.device.createShaderModule({
        code: `${directive ? "enable subgroups;\n" : ""}${body}`,
        label: "gemkit.subgroup_probe",
      });
      const info = await module.getCompilationInfo();
      const err = await this.device.popErrorScope();
      if (!err && !info.messages.some((m) => m.type === "error")) {
        this.#subgroupSize = size;
        this.#subgroupDirective = directive;
        return;
      }
    }
  }

  /**
   * Finds whether rgba32float textures can be bound as read-only storage (a WGSL language
   * feature newer than WebGPU 1.0): a probe layout and kernel are made inside an error scope.
   * Called once by {@link initGpu}.
   */
  async probeStorageTextureReads(): Promise<void> {
    const probe = defineKernel({
      name: "storage_texture_probe",
      params: "n: u32",
      bindings: [["T", "rtex"]],
      body: `@compute @workgroup_size(1)
fn main() { _ = ${texelLoad("T", "P.n", "rtex")}; }`,
    });
    this.device.pushErrorScope("validation");
    let ok = true;
    try {
      const layout = this.#layout(probe.buffers);
      const module = this.device.createShaderModule({ code: probe.source, label: probe.name });
      const info = await module.getCompilationInfo();
      ok = !info.messages.some((m) => m.type === "error");
      this.device.createComputePipeline({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: "main" },
        label: probe.name,
      });
    } catch {
      // An implementation that does not know the access mode may throw rather than report it.
      ok = false;
    }
    const err = await this.device.popErrorScope();
    this.#storageReads = ok && !err;
    if (!this.#storageReads) this.#layouts.delete("rtex");
  }

  /** The compiled pipeline of a kernel, cached by source text. */
  pipeline(kernel: Kernel): GPUComputePipeline {
    let p = this.#pipelines.get(kernel.source);
    if (p) return p;
    const code = this.#code(kernel);
    if (debugLevel() >= 2) {
      console.error(`--- kernel ${kernel.name}\n${numberLines(code)}`);
    }
    const label = `gemkit.${kernel.name}#${this.#pipelines.size}`;
    this.#sources.set(label, code);
    const module = this.device.createShaderModule({ code, label });
    p = this.device.createComputePipeline({
      label,
      layout: this.device.createPipelineLayout({
        bindGroupLayouts: [this.#layout(kernel.buffers)],
      }),
      compute: { module, entryPoint: "main" },
    });
    this.#pipelines.set(kernel.source, p);
    return p;
  }

  /**
   * A small buffer, outside the pool, for a binding the kernel does not touch in this dispatch.
   * Binding an output there twice instead is writable aliasing, which WebGPU forbids (Dawn
   * rejects it; wgpu lets it pass).
   */
  unusedBuffer(): GpuBuffer {
    this.#unused ??= new GpuBuffer(
      this.device.createBuffer({ size: 256, usage: STORAGE_USAGE, label: "gemkit.unused" }),
      256,
      256,
      "gemkit.unused",
    );
    return this.#unused;
  }

  /** Compiles a kernel and waits for the compiler's verdict; throws a ShaderError with line numbers. */
  async compile(kernel: Kernel): Promise<void> {
    this.device.pushErrorScope("validation");
    const code = this.#code(kernel);
    const module = this.device.createShaderModule({ code, label: kernel.name });
    const info = await module.getCompilationInfo();
    const errs = info.messages.filter((m) => m.type === "error");
    this.pipeline(kernel);
    const err = await this.device.popErrorScope();
    if (errs.length || err) {
      const what = errs.map((m) => `line ${m.lineNum}:${m.linePos}: ${m.message}`).join("\n") ||
        err!.message;
      throw new ShaderError(
        `kernel '${kernel.name}' failed:\n${what}\n${numberLines(code)}`,
      );
    }
  }

  /**
   * Records one dispatch. `buffers` bind to 1..n in the kernel's order; `params` fill binding 0.
   * Nothing is submitted until the batch is full or someone reads.
   */
  dispatch(
    kernel: Kernel,
    buffers: readonly (GpuBuffer | BufferWindow | GpuTexture)[],
    params: ParamWriter,
    groups: readonly [number, number, number],
  ): void {
    if (buffers.length !== kernel.buffers.length) {
      throw new Error(
        `kernel '${kernel.name}' binds ${kernel.buffers.length} buffers, got ${buffers.length}`,
      );
    }
    if (groups[0] === 0 || groups[1] === 0 || groups[2] === 0) return;
    const pipeline = this.pipeline(kernel);
    if (params.byteLength > UNIFORM_SLOT_BYTES) {
      throw new Error(
        `kernel '${kernel.name}': ${params.byteLength} bytes of params > ${UNIFORM_SLOT_BYTES}`,
      );
    }
    if (this.#uniformUsed + UNIFORM_SLOT_BYTES > UNIFORM_RING_BYTES) this.flush();
    // The query set holds PROFILE_QUERIES timestamps per submit.
    if (this.#profile && this.#profile.names.length * 2 >= PROFILE_QUERIES) this.flush();
    const at = this.#uniformUsed;
    params.writeTo(this.#uniformView, at);
    this.#uniformUsed += UNIFORM_SLOT_BYTES;

    let key = kernel.buffers.join("");
    for (const b of buffers) {
      if (b.released) {
        throw new DisposedError(
          `kernel '${kernel.name}': ${"view" in b ? "texture" : `buffer '${b.owner}'`} freed`,
        );
      }
      b.lastUse = this.epoch;
      key += "," + b.id +
        (b instanceof BufferWindow
          ? `@${b.offset}+${b.size}`
          : "capacity" in b && b.capacity > this.bindingLimit
          ? `:${b.bytes}` // bound by its used bytes, which change when the pool reuses it
          : "");
    }
    let bindGroup = this.#bindGroups.get(key);
    if (!bindGroup) {
      const entries: GPUBindGroupEntry[] = [
        {
          binding: 0,
          resource: { buffer: this.#uniformBuffer, offset: 0, size: UNIFORM_SLOT_BYTES },
        },
      ];
      buffers.forEach((b, i) =>
        entries.push({ binding: i + 1, resource: "view" in b ? b.view : this.#resource(kernel, b) })
      );
      bindGroup = this.device.createBindGroup({ layout: this.#layout(kernel.buffers), entries });
      if (this.#bindGroups.size >= BIND_GROUP_CACHE) this.#bindGroups.clear();
      this.#bindGroups.set(key, bindGroup);
    }
    const prof = this.#profile;
    const pass = prof ? this.#profiledPass(prof, kernel.name) : this.#computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup, [at]);
    pass.dispatchWorkgroups(groups[0], groups[1], groups[2]);
    if (prof) this.#endPass();
    this.stats.dispatches++;
    if (++this.#dispatches >= this.maxDispatchesPerSubmit) this.flush();
  }

  /** The most bytes one storage binding may cover on this device. */
  get bindingLimit(): number {
    return this.device.limits.maxStorageBufferBindingSize;
  }

  /**
   * A buffer binding: a window as it is, a buffer whole when it fits one binding (or its used
   * bytes when only its size class does not). Past that a kernel must bind windows (pages.ts);
   * one that does not is refused here, naming it, rather than by the device.
   */
  #resource(kernel: Kernel, b: GpuBuffer | BufferWindow): GPUBufferBinding {
    const limit = this.bindingLimit;
    if (b instanceof BufferWindow) return { buffer: b.buffer, offset: b.offset, size: b.size };
    if (b.capacity <= limit) return { buffer: b.buffer };
    const used = Math.ceil(b.bytes / 4) * 4;
    if (used <= limit) return { buffer: b.buffer, offset: 0, size: used };
    throw new BindingLimitError(
      `kernel '${kernel.name}' would bind buffer '${b.owner}' of ${b.bytes} bytes whole, over ` +
        `this device's maxStorageBufferBindingSize of ${limit}; this op has no paged form yet ` +
        "for a tensor that large",
    );
  }

  #commandEncoder(): GPUCommandEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  #computePass(): GPUComputePassEncoder {
    if (!this.#pass) this.#pass = this.#commandEncoder().beginComputePass();
    return this.#pass;
  }

  /** A pass of its own for one dispatch, with GPU timestamps before and after it. */
  #profiledPass(prof: Profile, name: string): GPUComputePassEncoder {
    this.#endPass();
    const i = prof.names.length * 2;
    prof.names.push(name);
    this.#pass = this.#commandEncoder().beginComputePass({
      timestampWrites: {
        querySet: prof.querySet,
        beginningOfPassWriteIndex: i,
        endOfPassWriteIndex: i + 1,
      },
    });
    return this.#pass;
  }

  /**
   * Starts timing every dispatch on the GPU (needs the adapter's `timestamp-query`). Each
   * dispatch gets a pass of its own, so a profiled run is a little slower than a plain one.
   */
  startProfile(): void {
    if (!this.features.has("timestamp-query")) {
      throw new Error(`gemkit: the adapter "${this.description}" has no timestamp-query`);
    }
    if (this.#profile) throw new Error("gemkit: a profile is already running");
    this.flush();
    this.#profile = {
      querySet: this.device.createQuerySet({ type: "timestamp", count: PROFILE_QUERIES }),
      names: [],
      pending: [],
      totals: new Map(),
    };
  }

  /** Stops the profile and returns per-kernel GPU time, largest first. */
  async stopProfile(): Promise<KernelTime[]> {
    const prof = this.#profile;
    if (!prof) throw new Error("gemkit: no profile is running");
    this.flush();
    this.#profile = null;
    for (const { names, buffer, resolved } of prof.pending) {
      await buffer.mapAsync(GPUMapMode.READ);
      const t = new BigInt64Array(buffer.getMappedRange());
      names.forEach((name, j) => {
        const ms = Number(t[2 * j + 1] - t[2 * j]) / 1e6;
        const e = prof.totals.get(name) ?? { kernel: name, calls: 0, ms: 0, firstMs: ms };
        e.calls++;
        e.ms += ms;
        prof.totals.set(name, e);
      });
      buffer.destroy();
      resolved.destroy();
    }
    prof.querySet.destroy();
    return [...prof.totals.values()].sort((a, b) => b.ms - a.ms);
  }

  /** Copies the open encoder's timestamps to a readable buffer, before the submit. */
  #resolveProfile(prof: Profile): void {
    if (!prof.names.length) return;
    this.#endPass();
    const bytes = prof.names.length * 16;
    const resolved = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const buffer = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = this.#commandEncoder();
    enc.resolveQuerySet(prof.querySet, 0, prof.names.length * 2, resolved, 0);
    enc.copyBufferToBuffer(resolved, 0, buffer, 0, bytes);
    prof.pending.push({ names: prof.names, buffer, resolved });
    prof.names = [];
  }

  #endPass(): void {
    this.#pass?.end();
    this.#pass = null;
  }

  /** Records a buffer-to-buffer copy in order with the dispatches around it. */
  copy(src: GpuBuffer, srcOffset: number, dst: GpuBuffer, dstOffset: number, bytes: number): void {
    if (bytes === 0) return;
    this.#endPass();
    src.lastUse = dst.lastUse = this.epoch;
    this.#commandEncoder().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, bytes);
  }

  /**
   * Records a copy of `texels` vec4s (16 bytes each) from `src` at `byteOffset` into the flat
   * texture `dst` from texel 0. `byteOffset` must be a multiple of 16.
   */
  copyToTexture(
    src: GpuBuffer | BufferWindow,
    byteOffset: number,
    dst: GpuTexture,
    texels: number,
  ): void {
    if (texels === 0) return;
    // A copy binds nothing: a window is read from its parent at its offset.
    if (src instanceof BufferWindow) byteOffset += src.offset;
    this.#endPass();
    src.lastUse = dst.lastUse = this.epoch;
    const enc = this.#commandEncoder();
    const full = Math.floor(texels / TEXTURE_WIDTH), rest = texels - full * TEXTURE_WIDTH;
    const bytesPerRow = TEXTURE_WIDTH * 16;
    if (full > 0) {
      enc.copyBufferToTexture({ buffer: src.buffer, offset: byteOffset, bytesPerRow }, {
        texture: dst.texture,
      }, [
        TEXTURE_WIDTH,
        full,
      ]);
    }
    if (rest > 0) {
      enc.copyBufferToTexture(
        { buffer: src.buffer, offset: byteOffset + full * bytesPerRow, bytesPerRow },
        { texture: dst.texture, origin: [0, full] },
        [rest, 1],
      );
    }
  }

  /** Submits everything recorded so far. Does not wait. */
  flush(): void {
    if (!this.#encoder) return;
    if (this.#profile) this.#resolveProfile(this.#profile);
    this.#endPass();
    if (this.#uniformUsed > 0) {
      this.device.queue.writeBuffer(
        this.#uniformBuffer,
        0,
        this.#uniformData,
        0,
        this.#uniformUsed,
      );
    }
    this.device.queue.submit([this.#encoder.finish()]);
    this.pool.destroyDoomed();
    this.#encoder = null;
    this.#uniformUsed = 0;
    this.#dispatches = 0;
    this.epoch++;
    this.stats.submits++;
  }

  /**
   * Uploads bytes into a buffer. queue.writeBuffer runs ahead of the open encoder, so a buffer
   * that the open encoder still uses is flushed first (its old contents are read before we write).
   */
  write(dst: GpuBuffer, data: ArrayBufferView<ArrayBuffer>, dstOffset = 0): void {
    if (dst.lastUse === this.epoch) this.flush();
    let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    this.device.queue.writeBuffer(dst.buffer, dstOffset, bytes);
    // A large write goes out at once, so the driver's staging copy of it is released before the
    // next (loading a model of several GB would otherwise hold all of them).
    if (bytes.byteLength >= 64 * 2 ** 20) this.device.queue.submit([]);
  }

  /** Copies `bytes` from a buffer back to the CPU. This is the one place that waits on the GPU. */
  async read(src: GpuBuffer, srcOffset: number, bytes: number): Promise<ArrayBuffer> {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const staging = this.#takeStaging(size);
    this.#endPass();
    src.lastUse = this.epoch;
    this.#commandEncoder().copyBufferToBuffer(src.buffer, srcOffset, staging, 0, size);
    this.flush();
    this.stats.reads++;
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, size);
      const out = staging.getMappedRange(0, size).slice(0, bytes);
      staging.unmap();
      this.checkErrors();
      return out;
    } finally {
      this.#staging.push(staging);
    }
  }

  #takeStaging(size: number): GPUBuffer {
    const i = this.#staging.findIndex((b) => b.size >= size && b.size <= 4 * size + 65536);
    if (i >= 0) return this.#staging.splice(i, 1)[0];
    return this.device.createBuffer({
      size: Math.max(size, 4096),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "gemkit.staging",
    });
  }

  /** Waits until every submitted command has finished (used by benchmarks to time work). */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.checkErrors();
  }
}

/** Timestamp queries per profiled submit (two per dispatch). */
const PROFILE_QUERIES = 4096;

/** GPU time of one kernel over a profile. */
export interface KernelTime {
  /** Kernel name. */
  kernel: string;
  /** Dispatches of it. */
  calls: number;
  /** Their GPU time in milliseconds. */
  ms: number;
  /**
   * GPU time of the first dispatch. llvmpipe compiles a kernel to machine code when it first runs
   * it, so on a cold shader cache this minus a later dispatch's time is the compile.
   */
  firstMs: number;
}

interface Profile {
  querySet: GPUQuerySet;
  /** Kernel names of the dispatches in the open encoder, in query order. */
  names: string[];
  /** Resolved timestamps of submitted encoders, read by stopProfile. */
  pending: { names: string[]; buffer: GPUBuffer; resolved: GPUBuffer }[];
  totals: Map<string, KernelTime>;
}

let current: Gpu | null = null;
let pending: Promise<Gpu> | null = null;

/** Options for {@link initGpu}. */
export interface GpuOptions {
  /** Log the adapter's description, features and key limits to stderr (default true). */
  log?: boolean;
}

/**
 * On Linux, picks wgpu's Vulkan backend unless the user chose one: on llvmpipe the GL backend
 * takes 15-40 s to compile some shaders, Vulkan 0.2-0.4 s. Must run before the adapter is
 * requested (llvmpipe and wgpu read these when they start).
 */
function preferVulkan(): void {
  if (OS !== "linux") return;
  if (RUNTIME === "deno" && !env("DENO_WEBGPU_BACKEND")) setEnv("DENO_WEBGPU_BACKEND", "vulkan");
  if (!env("XDG_RUNTIME_DIR")) setEnv("XDG_RUNTIME_DIR", "/tmp");
  // llvmpipe defaults to 256-bit lanes; on an AVX-512 CPU 512-bit ones run every kernel
  // ~1.5x faster (measured on matmul).
  if (!env("LP_NATIVE_VECTOR_WIDTH")) {
    try {
      if (/\bavx512f\b/.test(readFileSync("/proc/cpuinfo", "utf8"))) {
        setEnv("LP_NATIVE_VECTOR_WIDTH", "512");
      }
    } catch {
      // No /proc/cpuinfo to read: llvmpipe's default stays.
    }
  }
}

const HOW_TO_GET_AN_ADAPTER =
  "No WebGPU adapter is available. On a machine without a GPU, install Mesa's CPU driver " +
  "(apt-get install -y mesa-vulkan-drivers) and run with DENO_WEBGPU_BACKEND=vulkan " +
  "XDG_RUNTIME_DIR=/tmp; under Bun or Node, also the npm package webgpu and the Mesa 25 driver " +
  "that scripts/setup.sh unpacks (the README's commands do all of it).";

/**
 * Acquires the process's WebGPU device once, requesting the adapter's full storage limits and
 * shader-f16 / timestamp-query where offered. Later calls return the same device.
 */
export function initGpu(opts: GpuOptions = {}): Promise<Gpu> {
  if (current) return Promise.resolve(current);
  pending ??= (async () => {
    preferVulkan();
    const gpuApi = await webgpu();
    if (!gpuApi) throw new NoAdapterError(HOW_TO_GET_AN_ADAPTER);
    const adapter = await gpuApi.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw new NoAdapterError(HOW_TO_GET_AN_ADAPTER);
    const want = [
      "maxStorageBufferBindingSize",
      "maxBufferSize",
      "maxStorageBuffersPerShaderStage",
      "maxComputeWorkgroupStorageSize",
      "maxComputeInvocationsPerWorkgroup",
      "maxComputeWorkgroupSizeX",
    ] as const;
    const requiredLimits: Record<string, number> = {};
    for (const k of want) requiredLimits[k] = adapter.limits[k];
    const requiredFeatures = (["shader-f16", "timestamp-query"] as GPUFeatureName[])
      .filter((f) => adapter.features.has(f));
    // Subgroup builtins, where the subgroup size is fixed (kernels unroll over it). Deno 2.9
    // grants the feature without listing it among the adapter's, so it is asked for and the
    // device requested again without it when refused.
    const { subgroupMinSize: sgMin, subgroupMaxSize: sgMax } = adapter.info;
    const subgroupSize = sgMin && sgMin === sgMax && env("GEMKIT_SUBGROUPS") !== "0" ? sgMin : 0;
    let device: GPUDevice | null = null;
    if (subgroupSize) {
      device = await adapter.requestDevice({
        requiredLimits,
        requiredFeatures: [...requiredFeatures, "subgroups" as GPUFeatureName],
      }).catch(() => null);
    }
    device ??= await adapter.requestDevice({ requiredLimits, requiredFeatures });
    const gpu = new Gpu(adapter, device);
    if (device.features.has("subgroups")) await gpu.probeSubgroups(subgroupSize);
    await gpu.probeStorageTextureReads();
    if (opts.log ?? true) {
      const l = device.limits;
      logLine(
        `gemkit: WebGPU adapter "${gpu.description}"` +
          ` (backend ${
            RUNTIME === "deno" ? env("DENO_WEBGPU_BACKEND") ?? "default" : "dawn"
          }, profile ${gpu.tuning.profile}${
            gpu.mesa ? `, Mesa ${gpu.mesa}` : ""
          }, tuning ${gpu.tuningSource});` +
          ` features [${[...gpu.features].join(", ")}];` +
          ` maxStorageBufferBindingSize ${l.maxStorageBufferBindingSize},` +
          ` maxBufferSize ${l.maxBufferSize}, maxStorageBuffersPerShaderStage ${l.maxStorageBuffersPerShaderStage},` +
          ` maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize},` +
          ` maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}`,
      );
    }
    if (gpu.tuningWarning) console.error(`gemkit: tuning: ${gpu.tuningWarning}`);
    device.lost.then((info) => {
      if (info.reason !== "destroyed") console.error(`gemkit: WebGPU device lost: ${info.message}`);
    });
    current = gpu;
    return gpu;
  })();
  pending.catch(() => (pending = null));
  return pending;
}

/** The device acquired by {@link initGpu}; throws when it has not been called yet. */
export function gpu(): Gpu {
  if (!current) throw new Error("gemkit: the GPU is not initialised; `await initGpu()` first");
  return current;
}
