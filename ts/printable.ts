/**
 * Text from a file (an overlay's meta, a tool's output, a peer's message) is
 * shown to a person only through {@link printable}: a control character in
 * it would otherwise reach the terminal, where an escape sequence can clear
 * the screen, set the window title, hide text or forge lines of output.
 * Runtime-neutral; imports nothing.
 */

/**
 * C0 controls (NUL, \t, \n, \r and ESC among them), DEL, C1 controls (0x9b is
 * a one-byte CSI), the line and paragraph separators, and the bidirectional
 * overrides and isolates, which reorder what a reader sees.
 */
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** Characters that stay visible but must not appear bare in JSON sent to a terminal. */
const JSON_UNSAFE = /[\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

function hex(c: string, width: number): string {
  return c.charCodeAt(0).toString(16).padStart(width, "0");
}

/**
 * `s` with every control character written out as a visible escape (`\x1b`,
 * `\x00`, `\n`, `\u202e`), so it prints on one line as inert text.
 */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    return code <= 0xff ? `\\x${hex(c, 2)}` : `\\u${hex(c, 4)}`;
  });
}

/**
 * {@link printable} line by line: the text's own line breaks stay (a serial
 * tail in an error reads as lines), every other control character is shown
 * as an escape, so no line can move the cursor or rewrite another.
 */
export function printableLines(s: string): string {
  return s.split("\n").map(printable).join("\n");
}

/**
 * JSON text whose strings hold no raw control character: JSON.stringify
 * escapes C0 already; this also escapes DEL, C1 and the bidi controls as
 * `\uXXXX`, which parses back to the same value.
 */
export function printableJson(value: unknown, space?: number): string {
  return JSON.stringify(value, null, space).replace(JSON_UNSAFE, (c) => `\\u${hex(c, 4)}`);
}
