/**
 * What a kernel is: WGSL source plus the kind of each resource it binds, and the one place both
 * are written from ({@link defineKernel}).
 *
 * Convention for every kernel in src/gpu/kernels: binding 0 of group 0 is a uniform `Params`
 * struct, bindings 1..n follow `buffers`: storage buffers ("read", "rw"), or rgba32float textures
 * read with textureLoad, sampled ("tex") or as read-only storage ("rtex"), or written with
 * textureStore ("stex"). Buffers are bound whole
 * (storage-binding offsets must be 256-byte aligned), so element offsets travel in Params.
 */

import { TEXTURE_WIDTH } from "./pool.ts";

/** How a kernel binds a resource. */
export type Access = "read" | "rw" | "tex" | "rtex" | "stex";

/** A compute kernel: WGSL source (entry point `main`) and its storage bindings. */
export interface Kernel {
  /** Label for errors and debugging; also the pipeline label. */
  readonly name: string;
  /** Complete WGSL source; also the pipeline cache key. */
  readonly source: string;
  /** Access mode of bindings 1..n. */
  readonly buffers: readonly Access[];
  /**
   * Whether the source calls subgroup builtins. WGSL front ends disagree on the directive: Dawn
   * requires `enable subgroups;`, wgpu's naga (Deno 2.9) rejects it and takes the builtins
   * without, so the device prepends it where its compiler wants it.
   */
  readonly subgroups?: boolean;
}

/**
 * One resource of a kernel after Params: a storage buffer (name, "read" or "rw", WGSL type such
 * as `array<f32>`) or an rgba32float texture (name, "tex", "rtex" or "stex"; the type follows).
 */
export type Binding =
  | readonly [name: string, access: "read" | "rw", type: string]
  | readonly [name: string, access: "tex" | "rtex" | "stex"];

/** What {@link defineKernel} writes a kernel from. */
export interface KernelSpec {
  /** Label for errors and debugging. */
  name: string;
  /**
   * The fields of `struct Params` as written between its braces ("n: u32, c: f32"); a field
   * list over several lines is written one trimmed line each, indented.
   */
  params: string;
  /** Bindings 1..n, in order. */
  bindings: readonly Binding[];
  /** The module after the declarations: helpers, then the entry point `main`. */
  body: string;
}

/**
 * A kernel from one description: the WGSL declarations of Params (binding 0) and of bindings
 * 1..n, and the access list the dispatch binds by, come from the same `bindings`, so they
 * cannot disagree.
 */
export function defineKernel(spec: KernelSpec): Kernel {
  // A kernel that names f16 anywhere needs the extension enabled before everything else.
  const f16 = /\bf16\b/.test(spec.body) || spec.bindings.some((b) => /\bf16\b/.test(b[2] ?? ""));
  const subgroups = /\bsubgroup\w*/.test(spec.body);
  return {
    name: spec.name,
    source: `${f16 ? "enable f16;\n" : ""}${
      declarations(spec.params, spec.bindings)
    }\n${spec.body}`,
    buffers: spec.bindings.map((b) => b[1]),
    ...(subgroups ? { subgroups } : {}),
  };
}

/** WGSL declarations of `struct Params`, its uniform `P` at binding 0, and bindings 1..n. */
function declarations(params: string, bindings: readonly Binding[]): string {
  const fields = params.trim().split("\n").map((l) => l.trim());
  const struct = fields.length === 1
    ? `struct Params { ${fields[0]} };`
    : `struct Params {\n${fields.map((f) => `  ${f}`).join("\n")}\n};`;
  const decl = ([name, access, type]: Binding, i: number) => {
    const at = `@group(0) @binding(${i + 1}) var`;
    if (access === "tex") return `${at} ${name}: texture_2d<f32>;`;
    if (access === "rtex") return `${at} ${name}: texture_storage_2d<rgba32float, read>;`;
    if (access === "stex") return `${at} ${name}: texture_storage_2d<rgba32float, write>;`;
    return `${at}<storage, ${access === "rw" ? "read_write" : "read"}> ${name}: ${type};`;
  };
  const lines = [struct, "@group(0) @binding(0) var<uniform> P: Params;", ...bindings.map(decl)];
  return lines.join("\n");
}

/** How a kernel reads its textures: sampled, or as read-only storage (see `Gpu.textureReads`). */
export type TextureRead = "tex" | "rtex";

/**
 * WGSL loading flat texel `t` (a u32 expression) of a texture bound as `access`: texel t sits at
 * (t % TEXTURE_WIDTH, t / TEXTURE_WIDTH), the layout of every gemkit texture (pool.ts).
 */
export function texelLoad(name: string, t: string, access: TextureRead): string {
  const xy = `vec2<u32>((${t}) & ${TEXTURE_WIDTH - 1}u, (${t}) >> ${Math.log2(TEXTURE_WIDTH)}u)`;
  // A sampled texture's load names a mip level; a storage texture has none.
  return `textureLoad(${name}, ${xy}${access === "tex" ? ", 0" : ""})`;
}

const kernels = new Map<string, Kernel>();

/**
 * The one memo of generated kernels: the kernel stored under `key`, made by `make` on first use.
 * A key names the generator and every argument its source depends on ("softmax:true:64:group"),
 * so generators cannot collide. It keeps building long WGSL strings off the per-dispatch path;
 * the device separately caches compiled pipelines by source.
 */
export function cachedKernel(key: string, make: () => Kernel): Kernel {
  let k = kernels.get(key);
  if (!k) kernels.set(key, k = make());
  return k;
}

/** 0, 1, ..., n - 1: the indices a generator unrolls a kernel's block over. */
export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Largest workgroup count per grid dimension WebGPU guarantees. */
export const MAX_GROUPS_PER_DIM = 65535;

/**
 * Folds a 1-D count of workgroups into a grid that fits the per-dimension limit. Kernels recover the
 * linear id with {@link LINEAR_GROUP_ID}.
 */
export function grid(groups: number): [number, number, number] {
  if (groups <= MAX_GROUPS_PER_DIM) return [Math.max(groups, 1), 1, 1];
  const y = Math.ceil(groups / MAX_GROUPS_PER_DIM);
  if (y > MAX_GROUPS_PER_DIM) throw new Error(`grid of ${groups} workgroups exceeds 65535^2`);
  return [MAX_GROUPS_PER_DIM, y, 1];
}

/** WGSL expression for the linear workgroup id of a grid made by {@link grid}. */
export const LINEAR_GROUP_ID = "(wid.x + wid.y * nwg.x)";

/** Builtins to declare in a kernel entry point that uses {@link LINEAR_GROUP_ID}. */
export const GRID_BUILTINS =
  "@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32";

/**
 * The entry point of a kernel over a {@link grid} of `wg`-wide workgroups with one item per
 * invocation, or per workgroup when `perGroup`: `id` is the item, invocations for which `past`
 * holds return at once, the others run `body`.
 */
export function gridMain(
  wg: number,
  id: string,
  past: string,
  body: string,
  perGroup = false,
): string {
  return `@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let ${id} = ${perGroup ? LINEAR_GROUP_ID : `${LINEAR_GROUP_ID} * ${wg}u + lid`};
  if (${past}) { return; }
${body}
}`;
}

/**
 * Packs uniform parameters in WGSL uniform layout: 4-byte scalars, vec4 arrays 16-byte aligned.
 * Field order must match the kernel's `struct Params`.
 */
/** Writer of a kernel's uniform `Params` struct. */
export class ParamWriter {
  #words: number[] = [];
  #types: ("u" | "i" | "f")[] = [];

  /** Appends a u32 field. */
  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`u32 param ${v}`);
    this.#words.push(v);
    this.#types.push("u");
    return this;
  }
  /** Appends an i32 field. */
  i32(v: number): this {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) {
      throw new RangeError(`i32 param ${v}`);
    }
    this.#words.push(v);
    this.#types.push("i");
    return this;
  }
  /** Appends an f32 field. */
  f32(v: number): this {
    this.#words.push(v);
    this.#types.push("f");
    return this;
  }
  /** Pads to a 16-byte boundary, as WGSL requires before a vec4 or array<vec4>. */
  align16(): this {
    while (this.#words.length % 4 !== 0) this.u32(0);
    return this;
  }
  /** An `array<vec4<u32>, count>` holding `values` (zero-padded). */
  vec4u(values: readonly number[], count: number): this {
    this.align16();
    if (values.length > count * 4) throw new RangeError(`${values.length} values > ${count} vec4`);
    for (let i = 0; i < count * 4; i++) this.u32(values[i] ?? 0);
    return this;
  }

  /** Writes the words into `view` at byte offset `at`; returns the padded byte length. */
  writeTo(view: DataView, at: number): number {
    this.align16();
    for (let i = 0; i < this.#words.length; i++) {
      const t = this.#types[i], v = this.#words[i], o = at + 4 * i;
      if (t === "f") view.setFloat32(o, v, true);
      else if (t === "i") view.setInt32(o, v, true);
      else view.setUint32(o, v, true);
    }
    return this.#words.length * 4;
  }

  /** Size of the struct in bytes, padded to 16. */
  get byteLength(): number {
    return Math.ceil(this.#words.length / 4) * 16;
  }
}
