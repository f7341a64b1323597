// Uploads an overlay in two requests, the first cut off mid-segment, and
// resumes at the offset the server reports. Run inside the client namespace
// by net_server.test.ts; prints the endpoint and the offsets as JSON.
import { readFileSync } from "node:fs";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { CloudletClient, packedHead, segmentData } from "../ts/server/client.ts";
import type { Endpoint } from "../ts/server/protocol.ts";

const [server, tokenFile, overlayPath] = process.argv.slice(2);
const core = await loadCoreFromDisk();
const overlay = await openOverlay(core, overlayPath);
const client = new CloudletClient({ server, token: readFileSync(tokenFile, "utf8").trim() });
const s = await client.createSession();
let endpoint: Endpoint | null = null;
const events = client.events(s.id, (e) => {
  if (e.type === "done") endpoint = e.endpoint;
  return e.type === "done" || e.type === "error";
});
await client.sendMeta(s.id, packedHead(core, overlay, overlay.metaBytes!));
const total = overlay.meta.segments.reduce((t, x) => t + x.compressedSize, 0);
// Cut in the middle of the last segment, so that every earlier segment is complete on the server.
const sizes = overlay.meta.segments.map((x) => x.compressedSize);
const lastStart = total - sizes[sizes.length - 1];
const cutAt = lastStart + Math.floor(sizes[sizes.length - 1] / 2);
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
const resumeAt = await client.offset(s.id);
const after = await client.upload(s.id, resumeAt, segmentData(overlay, resumeAt));
await events;
console.log(JSON.stringify({ total, cutAt, lastStart, segments: sizes.length, resumeAt, after, endpoint, sessionId: s.id }));
await overlay.close();
