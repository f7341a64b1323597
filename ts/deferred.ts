/**
 * A promise with its settle functions in hand, for code that waits on an
 * event another path delivers (a segment arriving, a segment applied).
 * Runtime-neutral; imports nothing.
 */

/** A promise and the functions that settle it. */
export interface Deferred<T> {
  /** Settles when {@link resolve} or {@link reject} is called. */
  promise: Promise<T>;
  /** Fulfils the promise. */
  resolve: (value: T) => void;
  /** Rejects the promise. */
  reject: (reason: unknown) => void;
}

/**
 * A new deferred promise. Its rejection counts as handled (a waiter nobody
 * awaited must not fail the process as an unhandled rejection); whoever
 * awaits `promise` still sees it.
 */
export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((a, b) => ((resolve = a), (reject = b)));
  promise.catch(() => {});
  return { promise, resolve, reject };
}
