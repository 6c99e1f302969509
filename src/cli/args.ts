/**
 * Command-line parsing shared by the `deno task` entry points: `--flag value`, `--flag=value`,
 * boolean `--flag`, and `key=value` overrides. Unknown flags are errors that name them.
 */

import { env, exit, setEnv } from "../platform/platform.ts";

/** A flag: its type and help text. */
export interface FlagSpec {
  type: "string" | "number" | "boolean";
  help: string;
  default?: string | number | boolean;
}

/**
 * `--model`, `--tokenizer` and `--dtype`, the same for every command that opens a model
 * (openModel).
 */
export const MODEL_FLAGS: Record<"model" | "tokenizer" | "dtype", FlagSpec> = {
  model: {
    type: "string",
    help:
      "GEM checkpoint, run directory, HF directory, llama2.c .bin, @data/PATH, or hub id org/name",
  },
  tokenizer: { type: "string", help: "tokenizer file (required for llama2.c models)" },
  dtype: {
    type: "string",
    help: "f32 | f16: how the weight matrices are stored on the device (f16 needs shader-f16)",
    default: "f32",
  },
};

/**
 * `--tuning FILE`, on every command that runs kernels: pins a kernel tuning profile (as `deno task
 * tune` writes them) instead of the saved one for this adapter or the built-in one.
 */
export const TUNING_FLAG: FlagSpec = {
  type: "string",
  help: "kernel tuning profile to use (from deno task tune); default: the one saved for this " +
    "adapter, else the built-in",
};

/** openModel's options from MODEL_FLAGS, `--dtype` checked. */
export function modelOptions(
  flags: ParsedArgs["flags"],
): { tokenizer?: string; dtype: "f32" | "f16" } {
  const dtype = flags.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "f16") {
    throw new UsageError(`--dtype must be f32 or f16, got '${dtype}'`);
  }
  return { tokenizer: flags.tokenizer as string | undefined, dtype };
}

/** Parsed flags and the `key=value` overrides, in order. */
export interface ParsedArgs {
  flags: Record<string, string | number | boolean | undefined>;
  overrides: [string, string][];
}

/** A command-line mistake; the message is meant for the user as is. */
export class UsageError extends Error {
  /** Error class name. */
  override name = "UsageError";
}

/**
 * Parses `argv` against `spec`; `--help` throws a UsageError carrying the usage text, which ends
 * with `example`, a command that runs as it is from the checkout (tests run them).
 */
export function parseArgs(
  argv: readonly string[],
  spec: Record<string, FlagSpec>,
  usage: string,
  example?: string,
): ParsedArgs {
  const flags: ParsedArgs["flags"] = {};
  for (const [k, s] of Object.entries(spec)) flags[k] = s.default;
  const overrides: [string, string][] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--help" || a === "-h") throw new UsageError(helpText(spec, usage, example));
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      const s = spec[name];
      if (!s) throw new UsageError(`unknown flag --${name}\n${helpText(spec, usage, example)}`);
      let value: string;
      if (s.type === "boolean" && eq < 0) value = "true";
      else if (eq > 0) value = a.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i];
      else throw new UsageError(`--${name} needs a value`);
      if (s.type === "number") {
        const n = Number(value);
        if (value.trim() === "" || !Number.isFinite(n)) {
          throw new UsageError(`--${name}: '${value}' is not a number`);
        }
        flags[name] = n;
      } else if (s.type === "boolean") {
        if (value !== "true" && value !== "false") {
          throw new UsageError(`--${name}: '${value}' is not true/false`);
        }
        flags[name] = value === "true";
      } else flags[name] = value;
    } else if (/^[A-Za-z_][\w.]*=/.test(a)) {
      const eq = a.indexOf("=");
      overrides.push([a.slice(0, eq), a.slice(eq + 1)]);
    } else {
      throw new UsageError(`unexpected argument '${a}'\n${helpText(spec, usage, example)}`);
    }
  }
  // The device reads it when it starts (src/gpu/tuning.ts, selectTuning).
  if (spec.tuning === TUNING_FLAG && typeof flags.tuning === "string") {
    setEnv("GEMKIT_TUNING_FILE", flags.tuning);
  }
  return { flags, overrides };
}

function helpText(spec: Record<string, FlagSpec>, usage: string, example?: string): string {
  const rows = Object.entries(spec).map(([k, s]) =>
    `  --${k.padEnd(14)} ${s.help}${s.default !== undefined ? ` (default ${s.default})` : ""}`
  );
  return `${usage}\n\n${rows.join("\n")}${example ? `\n\nexample:\n  ${example}` : ""}`;
}

/** Runs a CLI main: usage errors and known failures print one line, not a stack trace. */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(e.message);
      exit(e.message.startsWith("usage") ? 0 : 2);
    }
    const err = e as Error;
    console.error(
      `error: ${err.name && err.name !== "Error" ? `${err.name}: ` : ""}${err.message}`,
    );
    if (env("GEMKIT_DEBUG")) console.error(err.stack);
    exit(1);
  }
}
