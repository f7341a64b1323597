/**
 * Errors a user can cause. Each carries a stable `code`, the file it concerns
 * (when there is one) and a message a user can act on; the CLI prints them
 * without a stack trace. Anything else that escapes is a bug.
 */

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
  /** A host tool (qemu, virsh, ...) is missing or failed. */
  | "HOST_TOOL"
  /** The guest did not become ready, or died. */
  | "GUEST"
  /** A registry or base lookup failed. */
  | "BASE_UNKNOWN"
  /** The operation was cancelled (Ctrl-C or an abort signal). */
  | "CANCELLED"
  /** A network peer misbehaved or refused the request. */
  | "REMOTE";

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

  /** The one-line message a user sees. */
  get userMessage(): string {
    return this.file ? `${this.file}: ${this.message}` : this.message;
  }
}

/** True for errors a user caused (print the message, not a stack). */
export function isCloudletError(e: unknown): e is CloudletError {
  return e instanceof CloudletError;
}
