/**
 * A tiny DOM builder for the inspector page: elements from a tag, props and
 * children, plus the `data-field` convention that ties a shown number to
 * its path in the `cloudlet inspect --json` report (the tests read them).
 */

type Child = Node | string | number | null | undefined | false;
type Props = Record<string, string | number | boolean | null | undefined | ((e: Event) => void)>;

/** Creates an HTML element; props starting with "on" are listeners, others attributes. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Creates an SVG element. */
export function s(tag: string, attrs: Record<string, string | number> = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** A value shown on the page, tagged with its path in the inspect report. */
export function field(path: string, value: string | number | boolean, text: string | Node = String(value), title?: string): HTMLElement {
  return h("span", { "data-field": path, "data-value": String(value), title: title ?? null }, text);
}

/** Removes all children and appends new ones. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** The element with `id`, which the page's HTML must have. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el as T;
}

/** "1,234,567". */
export function int(n: number): string {
  return n.toLocaleString("en-US");
}

/** Hex with a 0x prefix. */
export function hex(n: number): string {
  return "0x" + n.toString(16);
}
