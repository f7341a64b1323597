// Uploads an overlay in two requests, the first cut off mid-segment, and
// resumes at the offset the server reports. Run inside the client namespace
// by net_server.test.ts; prints the endpoint and the offsets as JSON. With a fourth argument
// "early" (net_early.test.ts) the session asks for early start and the cut falls in the middle of
// the largest segment, before the VM can resume; this client serves no wants (the in-order
// upload brings everything).
import { readFileSync } from "node:fs";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { CloudletClient, packedHead, segmentData } from "../ts/server/client.ts";
import type { Endpoint } from "../ts/server/protocol.ts";

const [server, tokenFile, overlayPath, mode] = process.argv.slice(2);
const early = mode === "early";
const core = await loadCoreFromDisk();
const overlay = await openOverlay(core, overlayPath);
const client = new CloudletClient({ server, token: readFileSync(tokenFile, "utf8").trim() });
const s = await client.createSession(undefined, undefined, early ? true : undefined);
let resumed = false;
const holding = new AbortController();
let endpoint: Endpoint | null = null;
const events = client.events(s.id, (e) => {
  if (e.type === "done") endpoint = e.endpoint;
  if (e.type === "resumed" && !resumed) {
    resumed = true;
    // A filling VM is held by its client's keep-alives, as a running one is.
    void client.hold(s.id, s.leaseMs, holding.signal, "filling").catch(() => {});
  }
  return e.type === "done" || e.type === "error";
});
await client.sendMeta(s.id, packedHead(core, overlay, overlay.metaBytes!));
const total = overlay.meta.segments.reduce((t, x) => t + x.compressedSize, 0);
// Cut in the middle of the last segment, so that every earlier segment is complete on the server.
const sizes = overlay.meta.segments.map((x) => x.compressedSize);
const cutSeg = early ? sizes.indexOf(Math.max(...sizes)) : sizes.length - 1;
const lastStart = sizes.slice(0, cutSeg).reduce((a, b) => a + b, 0);
const cutAt = lastStart + Math.floor(sizes[cutSeg] / 2);
// First request: stops in the middle of a segment, as a dropped connection would.
async function* firstPart() {
  let sent = 0;
  for await (const c of segmentData(overlay, 0)) {
    const room = cutAt - sent;
    if (room <= 0) break;
    yield c.subarray(0, room);
    sent += Math.min(room, c.length);
  }
  throw new Error("connection cut");
}
await client.upload(s.id, 0, firstPart()).catch(() => {});
await new Promise((r) => setTimeout(r, 300));
let resumeAt = await client.offset(s.id);
// Over a slow link the cut request's bytes still drain into the server after the cut, completing
// segments as they come: read the resume point once it has held still for 2 s (the polls keep the
// session active), not while it is still moving.
for (let still = 0, polls = 0; still < 8 && polls < 160; polls++) {
  await new Promise((r) => setTimeout(r, 250));
  const now = await client.offset(s.id);
  still = now === resumeAt ? still + 1 : 0;
  resumeAt = now;
}
let after = -1;
// Over a slow link the cut request's bytes still drain into the server for a while (the kernel sends what
// was written before the close): until they have, the server answers "another upload ... in progress".
for (let attempt = 0; after < 0; attempt++) {
  try {
    after = await client.upload(s.id, resumeAt, segmentData(overlay, resumeAt));
  } catch (e) {
    if (attempt >= 40 || !/in progress/.test((e as Error).message)) throw e;
    await new Promise((r) => setTimeout(r, 250));
    resumeAt = await client.offset(s.id);
  }
}
await events;
holding.abort();
// The test reads the VM after this process exits: detached, it does not wait for keep-alives.
if (early && endpoint) await client.detach(s.id);
console.log(JSON.stringify({ total, cutAt, lastStart, segments: sizes.length, resumeAt, after, endpoint, sessionId: s.id, resumed }));
await overlay.close();
