// The client's requests that carry a body (the in-order PATCH, a segment's PUT, the meta) against a
// server that answers early and drops the connection, as a cloudlet does on a corrupt segment: the
// request settles, with the answer or a clear error, and the process lives. Under Deno 2.5 its
// node:http client either never settled (the connection closed before the answer was read) or threw
// an uncatchable "Failed to fetch: request body stream errored" (the body stream was cancelled),
// which ended the whole client: CI saw that in net_server's fault test. Runs under Node and Deno.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import { CloudletClient } from "../ts/server/client.ts";
import { isCloudletError } from "../ts/errors.ts";

type Mode = "answer-and-drop" | "drop";

/**
 * A plain TCP server speaking just enough HTTP: it reads `after` bytes of a request, then
 * (answer-and-drop) writes a 422 answer and destroys the socket, or (drop) only destroys it.
 * Raw sockets, not node:http, so that the drop is a real one under both runtimes.
 */
async function rudeServer(mode: Mode, after: number): Promise<{ port: number; stop: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
    let n = 0;
    sock.on("data", (d: Buffer) => {
      n += d.length;
      if (n < after || sock.destroyed) return;
      if (mode === "answer-and-drop") {
        const body = JSON.stringify({ error: { code: "CORRUPT_SEGMENT", message: "segment 2 is corrupt" } });
        sock.write(`HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      }
      sock.destroy();
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    stop: async () => {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

async function* chunks(n: number, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < n; i++) yield new Uint8Array(size).fill(i);
}

/** What a request ended with: the server's answer as the client reports it, or the error. */
async function outcome(p: Promise<unknown>): Promise<string> {
  const limit = new Promise<string>((r) => setTimeout(() => r("never settled"), 15_000).unref?.());
  return Promise.race([
    p.then(
      (v) => `resolved ${JSON.stringify(v)}`,
      (e) => (isCloudletError(e) ? `${e.code}: ${e.message}` : `raw ${String(e)}`),
    ),
    limit,
  ]);
}

for (const mode of ["answer-and-drop", "drop"] as Mode[]) {
  test(`a streamed upload the server cuts (${mode}) settles with a clear error, and the client lives`, async () => {
    const srv = await rudeServer(mode, 1 << 20);
    try {
      const client = new CloudletClient({ server: `127.0.0.1:${srv.port}`, token: "t" });
      for (let round = 0; round < 3; round++) {
        const got = await outcome(client.upload("s1", 0, chunks(256, 64 << 10)));
        assert.notEqual(got, "never settled", `round ${round}`);
        assert.match(got, /^REMOTE: /, `round ${round}: ${got}`);
        if (mode === "answer-and-drop") assert.match(got, /segment 2 is corrupt|cannot reach the cloudlet|lost the connection to the cloudlet/, `round ${round}: ${got}`);
      }
    } finally {
      await srv.stop();
    }
  });

  test(`a segment's PUT the server cuts (${mode}) settles with a clear error`, async () => {
    const srv = await rudeServer(mode, 256 << 10);
    try {
      const client = new CloudletClient({ server: `127.0.0.1:${srv.port}`, token: "t" });
      for (let round = 0; round < 3; round++) {
        const got = await outcome(client.putSegment("s1", 2, new Uint8Array(8 << 20)));
        assert.match(got, /^REMOTE: /, `round ${round}: ${got}`);
      }
    } finally {
      await srv.stop();
    }
  });
}
