/**
 * The listing that `cloudlet inspect --web` serves at `api/session`: which
 * files make up the overlay and the base, and where the page can read them
 * by range. The page asks for it first; a 404 means "static files: drop
 * the overlay on the page".
 */

/** One file the server lets the page read. */
export interface SessionFile {
  /** File name (no directories): what the page shows and how seed-layout segments are found. */
  name: string;
  /** URL relative to the page; answers Range requests. */
  url: string;
  /** Size in bytes. */
  size: number;
}

/** What the server serves. */
export interface InspectSession {
  /** The overlay's files: the packed file, or the meta and every segment file present. */
  overlay: SessionFile[];
  /** The base disk, when `--base-disk` was given. */
  baseDisk: SessionFile | null;
  /** The base memory, when `--base-mem` was given. */
  baseMemory: SessionFile | null;
}

/** Path of the listing, relative to the page. */
export const SESSION_PATH = "api/session";
