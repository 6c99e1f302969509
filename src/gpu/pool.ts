/**
 * Buffer pool: every GPU storage buffer the engine uses comes from here and goes back here.
 *
 * A buffer is handed out as a {@link GpuBuffer} with an owner label (for leak reports) and must be
 * released exactly once. Released buffers are kept, grouped by size class, and reused; `trim()`
 * destroys the cached ones. Nothing relies on the garbage collector.
 */

/** One pooled storage buffer, owned by whoever acquired it until `release`. */
let nextBufferId = 0;

/** A pooled storage buffer and its bookkeeping. */
export class GpuBuffer {
  /** Unique id, part of the bind-group cache key. */
  readonly id: number = nextBufferId++;
  /** Submit epoch in which this buffer was last recorded into a command; see Gpu.epoch. */
  lastUse: number = -1;
  /** True once given back to the pool. */
  released = false;
  /** Wraps a created buffer; the pool does this. */
  constructor(
    readonly buffer: GPUBuffer,
    /** Bytes requested by the owner (the buffer's real size is `capacity`). */
    public bytes: number,
    readonly capacity: number,
    public owner: string,
  ) {}
}

/**
 * A byte range of a pooled buffer, bound on its own: how kernels reach tensors larger than one
 * storage binding may be (see pages.ts). `offset` is a multiple of the device's storage offset
 * alignment; it reads as its parent for liveness and last use.
 */
export class BufferWindow {
  /** A window of `parent`: `size` bytes from byte `offset`. */
  constructor(readonly parent: GpuBuffer, readonly offset: number, readonly size: number) {}
  /** The parent's GPU buffer. */
  get buffer(): GPUBuffer {
    return this.parent.buffer;
  }
  /** The parent's id. */
  get id(): number {
    return this.parent.id;
  }
  /** The parent's owner label. */
  get owner(): string {
    return this.parent.owner;
  }
  /** Whether the parent was released. */
  get released(): boolean {
    return this.parent.released;
  }
  /** Records the epoch of use on the parent. */
  set lastUse(epoch: number) {
    this.parent.lastUse = epoch;
  }
}

/** Rounds a request up to its size class: at most 1/8 wasted, 256-byte granularity. */
export function sizeClass(bytes: number): number {
  const b = Math.max(bytes, 16);
  const pow = 2 ** Math.ceil(Math.log2(b));
  const granule = Math.max(256, pow / 8);
  return Math.ceil(b / granule) * granule;
}

/**
 * Usage flags of every pooled buffer: STORAGE | COPY_SRC | COPY_DST, as the WebGPU spec numbers
 * them (the GPUBufferUsage global exists only once Bun or Node has loaded Dawn, after import).
 */
export const STORAGE_USAGE = 0x80 | 0x04 | 0x08;

/** Pool of storage buffers grouped by size class; see the module comment. */
export class BufferPool {
  #free = new Map<number, GpuBuffer[]>();
  #live = new Set<GpuBuffer>();
  #liveBytes = 0;
  #pooledBytes = 0;
  #peakLiveBytes = 0;
  #largest = 0;
  #doomed: GpuBuffer[] = [];
  /** Cached (released) bytes beyond which released buffers are destroyed instead of kept. */
  maxPooledBytes = 2 ** 30;

  /**
   * A pool allocating from `device`; `onDestroy` runs before buffers are destroyed (the device
   * drops its cached bind groups, which may reference them).
   */
  constructor(readonly device: GPUDevice, readonly onDestroy: () => void = () => {}) {}

  /**
   * A buffer of at least `bytes`, labelled with its owner. With `notUsedIn`, prefers a buffer
   * that no command of that submit epoch touches: uploads into it need not flush first.
   */
  acquire(bytes: number, owner: string, notUsedIn = -2): GpuBuffer {
    const cap = sizeClass(bytes);
    const list = this.#free.get(cap);
    let buf: GpuBuffer | undefined;
    if (list?.length) {
      let i = list.length - 1;
      while (i >= 0 && list[i].lastUse === notUsedIn) i--;
      // All cached ones pending: a new buffer is cheaper than a flush; the pool settles.
      if (i >= 0) buf = list.splice(i, 1)[0];
    }
    if (buf) {
      this.#pooledBytes -= cap;
      buf.bytes = bytes;
      buf.owner = owner;
      buf.released = false;
    } else {
      const b = this.device.createBuffer({ size: cap, usage: STORAGE_USAGE, label: owner });
      buf = new GpuBuffer(b, bytes, cap, owner);
    }
    this.#live.add(buf);
    this.#liveBytes += cap;
    this.#peakLiveBytes = Math.max(this.#peakLiveBytes, this.#liveBytes);
    this.#largest = Math.max(this.#largest, bytes);
    return buf;
  }

  /** Gives a buffer back; it is cached for reuse (or destroyed past `maxPooledBytes`). */
  release(buf: GpuBuffer): void {
    if (buf.released) throw new Error(`buffer '${buf.owner}' released twice`);
    buf.released = true;
    this.#live.delete(buf);
    this.#liveBytes -= buf.capacity;
    if (this.#pooledBytes + buf.capacity > this.maxPooledBytes) {
      // The open command encoder may still use it: destroy only after the next submit.
      this.#doomed.push(buf);
      return;
    }
    const list = this.#free.get(buf.capacity) ?? [];
    list.push(buf);
    this.#free.set(buf.capacity, list);
    this.#pooledBytes += buf.capacity;
  }

  /**
   * Destroys all cached (released) buffers. Call only when no unsubmitted command uses them
   * (the device calls it after a submit).
   */
  trim(): void {
    for (const list of this.#free.values()) this.#doomed.push(...list);
    this.#free.clear();
    this.#pooledBytes = 0;
    this.destroyDoomed();
  }

  /** Destroys buffers released past the cache limit; the device calls this after each submit. */
  destroyDoomed(): void {
    if (!this.#doomed.length) return;
    this.onDestroy();
    for (const b of this.#doomed) b.buffer.destroy();
    this.#doomed = [];
  }

  /** Bytes held by buffers that are acquired and not yet released. */
  get liveBytes(): number {
    return this.#liveBytes;
  }
  /** Number of buffers acquired and not yet released. */
  get liveCount(): number {
    return this.#live.size;
  }
  /** The most bytes live at once since the last {@link resetPeak}. */
  get peakLiveBytes(): number {
    return this.#peakLiveBytes;
  }
  /** The largest single request (bytes) since the last {@link resetPeak}. */
  get largestAcquire(): number {
    return this.#largest;
  }
  /** Starts a new measurement of {@link peakLiveBytes} and {@link largestAcquire}. */
  resetPeak(): void {
    this.#peakLiveBytes = this.#liveBytes;
    this.#largest = 0;
  }
  /** Bytes held in the cache of released buffers. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }
  /** Owner labels of live buffers with their counts, for leak reports. */
  liveOwners(): Map<string, number> {
    const m = new Map<string, number>();
    for (const b of this.#live) m.set(b.owner, (m.get(b.owner) ?? 0) + 1);
    return m;
  }
}

/** Width in texels of every pooled texture: rows of 64 KiB satisfy copy alignment rules. */
export const TEXTURE_WIDTH = 4096;

let nextTextureId = 0;

/** A pooled 2-D rgba32float texture used as a flat array of vec4 texels (row-major). */
export class GpuTexture {
  /** Unique id, part of the bind-group cache key (shared counter space with buffers: negative). */
  readonly id: number = -1 - nextTextureId++;
  /** Submit epoch of its last recorded use. */
  lastUse: number = -1;
  /** True once given back to the pool. */
  released = false;
  /** The default view, made once. */
  readonly view: GPUTextureView;
  /** Wraps a created texture; the pool does this. */
  constructor(readonly texture: GPUTexture, readonly height: number) {
    this.view = texture.createView();
  }
  /** Texels it holds. */
  get texels(): number {
    return TEXTURE_WIDTH * this.height;
  }
}

/** Pool of flat textures by height (powers of two), released and reused like buffers. */
export class TexturePool {
  #free = new Map<number, GpuTexture[]>();

  /** A pool allocating from `device`. */
  constructor(readonly device: GPUDevice) {}

  /** A texture holding at least `texels` vec4 texels. */
  acquire(texels: number): GpuTexture {
    const rows = Math.max(1, Math.ceil(texels / TEXTURE_WIDTH));
    const height = 2 ** Math.ceil(Math.log2(rows));
    if (height > this.device.limits.maxTextureDimension2D) {
      throw new Error(
        `an operand of ${texels} texels exceeds the ${this.device.limits.maxTextureDimension2D}-row texture limit`,
      );
    }
    const t = this.#free.get(height)?.pop();
    if (t) {
      t.released = false;
      return t;
    }
    const texture = this.device.createTexture({
      size: [TEXTURE_WIDTH, height],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST |
        GPUTextureUsage.STORAGE_BINDING,
      label: "gemkit.texture",
    });
    return new GpuTexture(texture, height);
  }

  /** Gives a texture back for reuse. */
  release(t: GpuTexture): void {
    if (t.released) throw new Error("texture released twice");
    t.released = true;
    const list = this.#free.get(t.height) ?? [];
    list.push(t);
    this.#free.set(t.height, list);
  }
}
