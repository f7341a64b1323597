/**
 * Errors a user can cause. Each carries a stable `code`, the file it concerns
 * (when there is one) and a message a user can act on; the CLI prints them
 * without a stack trace. Anything else that escapes is a bug.
 */
import { printable, printableLines } from "./printable.ts";

/** Stable error codes. Never change or reuse a value: scripts match on them. */
export type ErrorCode =
  /** An input file does not exist or cannot be read. */
  | "MISSING_INPUT"
  /** The overlay was made from another base VM. */
  | "WRONG_BASE"
  /** The overlay meta is malformed, hostile or from an unknown version. */
  | "BAD_META"
  /** A segment's bytes do not match their recorded hash, or do not decode. */
  | "CORRUPT_SEGMENT"
  /** A segment file named by the meta is missing. */
  | "MISSING_SEGMENT"
  /** The overlay ends before all of its declared bytes. */
  | "TRUNCATED"
  /** A rebuilt chunk does not match the overlay's check. */
  | "VERIFY_FAILED"
  /** Writing an output failed (disk full, permissions). */
  | "OUTPUT_FAILED"
  /** A command-line argument is wrong. */
  | "BAD_ARGUMENT"
  /** An input image is not in the expected format. */
  | "BAD_INPUT"
  /** A host tool (qemu, virsh, ...) failed (one that is not installed is TOOL_MISSING). */
  | "HOST_TOOL"
  /** The guest did not become ready, or died. */
  | "GUEST"
  /** A registry or base lookup failed. */
  | "BASE_UNKNOWN"
  /** The operation was cancelled (Ctrl-C or an abort signal). */
  | "CANCELLED"
  /** A network peer misbehaved or refused the request. */
  | "REMOTE"
  /** Setup: a build output (the core's .wasm, its glue, the component) is missing; run scripts/setup.sh. */
  | "NOT_BUILT"
  /** Setup: a host tool (qemu-system-x86_64, qemu-img, virsh, xz, ...) is not installed. */
  | "TOOL_MISSING"
  /** Setup: /dev/kvm lacks the group permission libvirt and KVM guests need. */
  | "KVM_PERMISSION"
  /** Something else holds what the command needs: a port, a base a VM runs on, the home another server uses. */
  | "CONFLICT";

/**
 * Exit codes of the CLI per error code, after sysexits.h: a setup problem
 * gets its own (the message says what to run), so a script can tell "set the
 * machine up" from "your input is wrong" (1), a usage error (2), "something
 * else holds the port or base" (75) or a bug (70). EXIT_CODE_HELP lists them
 * for --help and docs/cli.md; keep the three in step.
 */
const EXIT_CODES: Partial<Record<ErrorCode, number>> = {
  BAD_ARGUMENT: 2,
  /** EX_UNAVAILABLE: a support program does not exist. */
  TOOL_MISSING: 69,
  /** EX_NOPERM: insufficient permission. */
  KVM_PERMISSION: 77,
  /** EX_CONFIG: found in an unconfigured state. */
  NOT_BUILT: 78,
  /** EX_TEMPFAIL: the same command may work once the port, base or home is free. */
  CONFLICT: 75,
  /** As a shell reports SIGINT. */
  CANCELLED: 130,
};

/** The exit codes as `cloudlet --help` lists them (code, meaning). */
export const EXIT_CODE_HELP: readonly [number, string][] = [
  [0, "success"],
  [1, "an input, the base or the guest is wrong (the message says which file and what)"],
  [2, "usage error: an unknown command or option, a missing or bad value"],
  [69, "a host tool (qemu, virsh, xz, ...) is not installed"],
  [70, "internal error: a bug, please report it"],
  [75, "conflict: a port, a base or the home is in use by something else; retry when it is free"],
  [77, "no permission for /dev/kvm"],
  [78, "not built: run scripts/setup.sh"],
  [130, "cancelled (Ctrl-C or SIGTERM)"],
];

/** The process exit code for a CloudletError of `code` (1 unless it has its own). */
export function exitCodeOf(code: ErrorCode): number {
  return EXIT_CODES[code] ?? 1;
}

/** An error a user can cause and fix; printed as `cloudlet: [file: ]message`. */
export class CloudletError extends Error {
  override name = "CloudletError";
  /** @param code stable machine-readable code @param message what is wrong and what to do @param file the file concerned */
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly file?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The one-line message a user sees; control characters from a file or a peer are shown as escapes. */
  get userMessage(): string {
    // The file name on one line whatever it holds; the message keeps its own line breaks (a serial tail, say).
    return (this.file ? `${printable(this.file)}: ` : "") + printableLines(this.message);
  }
}

/** True for errors a user caused (print the message, not a stack). */
export function isCloudletError(e: unknown): e is CloudletError {
  return e instanceof CloudletError;
}
