/**
 * List output (`ps`, `list-base`): a table with a header row for people;
 * `-q` (ids only), `--format json-lines` or `--format TEMPLATE` for scripts;
 * `--json` for one JSON array. The JSON fields and the table's columns use
 * the same words.
 */
import type { Command } from "cac";
import { CloudletError } from "../ts/errors.ts";
import { printable, printableJson } from "../ts/printable.ts";
import type { Common } from "./options.ts";

/** The options list commands take. */
export interface ListOptions extends Common {
  quiet?: boolean;
  format?: string;
}

/** One table column: its header and how a row shows in it. */
export interface Column<T> {
  header: string;
  value: (row: T) => string;
}

/** Adds `-q` and `--format` to a list command. */
export function listOptions(c: Command): Command {
  return c
    .option("-q, --quiet", "Print only the ids, one a line")
    .option("--format <fmt>", "table (default), json-lines (one JSON object a line), or a template such as '{{id}}\\t{{name}}' (fields as in --json; \\t and \\n are understood)");
}

/** A template's field `path` (dotted) of `obj`, as text. */
function field(obj: unknown, path: string): string {
  let v: unknown = obj;
  for (const k of path.split(".")) v = v !== null && typeof v === "object" && Object.hasOwn(v, k) ? (v as Record<string, unknown>)[k] : undefined;
  if (v === undefined) throw new CloudletError("BAD_ARGUMENT", `--format: no field "${path}" (the fields are those of --json)`);
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** Prints `rows` as --json, -q, --format or a table; `json` gives each row's JSON form (with an `id`). */
export function printList<T>(o: ListOptions, rows: T[], json: (row: T) => { id: string } & Record<string, unknown>, columns: Column<T>[], empty: string): void {
  const fmt = Array.isArray(o.format) ? (o.format.at(-1) as string) : o.format;
  if (o.json) {
    process.stdout.write(printableJson(rows.map(json), 2) + "\n");
    return;
  }
  let lines: string[];
  if (o.quiet) lines = rows.map((r) => printable(json(r).id));
  else if (fmt === "json-lines" || fmt === "jsonl") lines = rows.map((r) => printableJson(json(r)));
  else if (fmt !== undefined && fmt !== "table") {
    const template = String(fmt).replace(/\\t/g, "\t").replace(/\\n/g, "\n");
    if (!/\{\{\s*\.?[\w.]+\s*\}\}/.test(template)) throw new CloudletError("BAD_ARGUMENT", `--format must be table, json-lines or a template with {{field}} in it, not "${fmt}"`);
    lines = rows.map((r) => {
      const j = json(r);
      return template.replace(/\{\{\s*\.?([\w.]+)\s*\}\}/g, (_, k: string) => printable(field(j, k)));
    });
  } else {
    if (!rows.length) {
      process.stdout.write(empty + "\n");
      return;
    }
    const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => printable(c.value(r))))];
    const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i].length)));
    lines = cells.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join("  ").trimEnd());
  }
  if (lines.length) process.stdout.write(lines.join("\n") + "\n");
}
