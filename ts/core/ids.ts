/**
 * Ids, prefixes and short forms, one way for VMs, bases and sessions: any
 * unique prefix of an id names it (as in docker), an ambiguous prefix's error
 * says how many characters tell the candidates apart, and tables show the
 * first {@link SHORT_ID} characters of every id (messages and --json show
 * them whole, so they can be copied).
 */
import { CloudletError } from "../errors.ts";

/** Characters of an id shown in text output. */
export const SHORT_ID = 12;

/** The short form of an id, for tables. */
export function shortId(id: string): string {
  return id.slice(0, SHORT_ID);
}

/** Characters needed to tell every id of `ids` apart (the longest shared prefix of two, plus one). */
export function charsToTellApart(ids: string[]): number {
  const sorted = [...ids].sort();
  let need = 1;
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1];
    const b = sorted[i];
    let n = 0;
    while (n < a.length && n < b.length && a[n] === b[n]) n++;
    need = Math.max(need, n + 1);
  }
  return need;
}

/**
 * The one id of `ids` that `ref` names: the whole id or a unique prefix.
 * `kind` names what the ids are ("VM", "base", "session") and `see` the
 * command that lists them. Returns null when nothing matches (the caller
 * may try other kinds); an ambiguous prefix is an error.
 */
export function matchIdPrefix(ref: string, ids: readonly string[], kind: string, see: string): string | null {
  if (!ref || !/^[0-9a-f]+$/.test(ref)) return null;
  const exact = ids.find((id) => id === ref);
  if (exact) return exact;
  const hits = ids.filter((id) => id.startsWith(ref));
  if (hits.length === 1) return hits[0];
  if (hits.length > 1) throw new CloudletError("BAD_ARGUMENT", `"${ref}" is the start of ${hits.length} ${kind} ids; give at least ${charsToTellApart(hits)} characters (see ${see})`);
  return null;
}
