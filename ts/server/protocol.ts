/**
 * The cloudlet synthesis protocol (HTTP/1.1): shared types and constants of
 * the server and the client. docs/protocol.md describes the state machine;
 * docs/openapi.yaml the endpoints.
 */
import type { PortForward } from "../overlay/format.ts";

/** Protocol version, in every path. */
export const API = "/v1";
/** Default port. */
export const DEFAULT_PORT = 8021;
/** Header carrying a resumable upload's offset (segment-data bytes). */
export const OFFSET_HEADER = "upload-offset";
/** Header carrying the segment-data length. */
export const LENGTH_HEADER = "upload-length";

/** Session states; see docs/protocol.md for the transitions. */
export type SessionState = "created" | "receiving" | "launching" | "filling" | "running" | "failed" | "closed";

/** A session as reported by GET /v1/sessions/{id} and in events. */
export interface SessionStatus {
  id: string;
  state: SessionState;
  /** Segment-data bytes received in complete segments (the resume offset). */
  received: number;
  /** Segment-data bytes expected (after the meta step). */
  expected: number;
  /** Overlay bytes decoded, verified and applied. */
  applied: number;
  /** Base id of the overlay (after the meta step). */
  baseId: string | null;
  /** Where to reach the VM (once running). */
  endpoint: Endpoint | null;
  /** Why it failed (state failed). */
  error: { code: string; message: string } | null;
  /**
   * The lease: while the server waits on the client (for segment bytes, or
   * for keep-alives once running) a session with no request for this long
   * fails, and a running one has its VM stopped. Any request on the session
   * renews it.
   */
  leaseMs: number;
  /** The client detached: the VM runs on without keep-alives (until DELETE or the detached limit). */
  detached: boolean;
  /** The session starts its VM early (resumed on the boot set, filled while it runs). */
  earlyStart?: boolean;
  /** Early start was asked for but runs as full pipelined synthesis: why. */
  earlyStartFallback?: string;
  /** Segments received out of order (asked for on the wants stream). */
  outOfOrder?: number;
}

/** GET /v1/sessions: every session the server holds (a token holder sees them all). */
export interface SessionListing {
  sessions: SessionStatus[];
}

/** How to reach a synthesized VM. */
export interface Endpoint {
  /** VM id on the cloudlet. */
  vmId: string;
  /** Host address to connect to. */
  host: string;
  /** Forwards: guest port -> host port actually used. */
  ports: PortForward[];
  /** Milliseconds from the first segment byte to the VM running. */
  ms: { synthesis: number; launch: number; local?: number };
}

/** One line of the NDJSON event stream. */
export type SessionEvent =
  | { type: "status"; status: SessionStatus }
  | { type: "progress"; received: number; applied: number; expected: number }
  | { type: "resumed"; endpoint: Endpoint }
  | { type: "done"; endpoint: Endpoint }
  | { type: "error"; code: string; message: string };

/** GET /v1/info. */
export interface ServerInfo {
  name: string;
  version: string;
  bases: Array<{ id: string; name: string; diskSize: number; memorySize: number; machine: string }>;
  sessions: { active: number; max: number };
}
