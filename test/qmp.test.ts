// QmpClient's event numbers against a real QEMU (`-machine none`: no guest, starts at once). Each stop/cont
// makes QEMU send STOP then RESUME, so a run of them passes the 1000 events the client keeps, and a reader
// that keeps its place must still see every event once, in order (an index into `events` shifts at the trim).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { QmpClient, type QmpEvent } from "../ts/vm/qmp.ts";

/** Starts an empty QEMU with a QMP socket, runs `body` against it, and kills it. */
async function withQemu(body: (qmp: QmpClient) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(join(tmpdir(), "cloudlet-qmp-"));
  const sock = join(dir, "qmp.sock");
  const child = spawn("qemu-system-x86_64", ["-machine", "none", "-display", "none", "-nodefaults", "-no-user-config", "-qmp", `unix:${sock},server=on,wait=off`], { stdio: "ignore" });
  const exited = new Promise((r) => child.once("exit", r));
  let qmp: QmpClient | null = null;
  try {
    qmp = await QmpClient.connect(sock, { alive: () => child.exitCode === null && child.signalCode === null });
    await body(qmp);
  } finally {
    qmp?.close();
    child.kill("SIGKILL");
    await exited;
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** Makes QEMU send `pairs` STOP/RESUME pairs and waits until the client has them all. */
async function stopCont(qmp: QmpClient, pairs: number): Promise<void> {
  const want = qmp.eventCount + 2 * pairs;
  for (let i = 0; i < pairs; i++) {
    await qmp.execute("stop");
    await qmp.execute("cont");
  }
  const deadline = Date.now() + 10_000;
  while (qmp.eventCount < want && Date.now() < deadline) await qmp.nextEvent(1000, qmp.eventCount);
  assert.equal(qmp.eventCount, want, "QEMU sent one STOP and one RESUME per pair");
}

/** Checks that `events` alternate STOP, RESUME starting with `first`, with timestamps that never go back. */
function assertAlternating(events: QmpEvent[], first: "STOP" | "RESUME"): void {
  const names = events.map((e) => e.event);
  const expected = names.map((_, i) => ((i % 2 === 0) === (first === "STOP") ? "STOP" : "RESUME"));
  assert.deepEqual(names, expected);
  const micros = events.map((e) => e.timestamp!.seconds * 1e6 + e.timestamp!.microseconds);
  for (let i = 1; i < micros.length; i++) assert.ok(micros[i] >= micros[i - 1], `event ${i} is older than the one before: read twice?`);
}

test("a reader that keeps its place sees every event once across the 1000-event trim", async () => {
  await withQemu(async (qmp) => {
    const seenByReader: QmpEvent[] = [];
    let place = 0;
    const read = () => {
      const r = qmp.eventsSince(place);
      assert.equal(r.missed, 0, `the reader at ${place} missed events`);
      seenByReader.push(...r.events);
      place = r.next;
    };
    // Reads at 300, 600, 900, then 1200 and 1500: the last two reads straddle and follow the trim.
    for (let round = 0; round < 5; round++) {
      await stopCont(qmp, 150);
      read();
    }
    assert.equal(qmp.eventCount, 1500);
    assert.equal(qmp.events.length, 1000, "the client keeps 1000 events");
    assert.equal(seenByReader.length, 1500, "the reader got each event exactly once");
    assertAlternating(seenByReader, "STOP");

    // A place taken before the trim still names the same events after it: 950 is kept (500..1499), and the
    // reader gets 550 events, not the last 50 that `events.slice(950)` would give.
    const late = qmp.eventsSince(950);
    assert.equal(late.missed, 0);
    assert.equal(late.events.length, 550);
    assert.deepEqual(late.events, seenByReader.slice(950));
    assert.equal(late.next, 1500);
  });
});

test("a reader that falls more than 1000 events behind is told how many it missed", async () => {
  await withQemu(async (qmp) => {
    await stopCont(qmp, 600);
    const r = qmp.eventsSince(0);
    assert.equal(r.missed, 200, "events 0..199 were dropped");
    assert.equal(r.events.length, 1000);
    assert.equal(r.next, 1200);
    assertAlternating(r.events, "STOP");
    // Nothing new: an empty read that keeps the place.
    assert.deepEqual(qmp.eventsSince(r.next), { events: [], next: 1200, missed: 0 });
  });
});

test("nextEvent with a place returns at once when an event past it is already here, and waits otherwise", async () => {
  await withQemu(async (qmp) => {
    const place = qmp.eventCount;
    await qmp.execute("stop"); // its STOP may arrive before or after the reply
    await qmp.nextEvent(5000, place);
    assert.ok(qmp.eventCount > place, "woke with an event past the place");
    // Already past the place: no wait, even with a long timeout.
    const t0 = performance.now();
    await qmp.nextEvent(60_000, place);
    assert.ok(performance.now() - t0 < 1000, "did not wait for an event it already had");
    // Nothing past the newest: waits for the timeout.
    const t1 = performance.now();
    await qmp.nextEvent(200, qmp.eventCount);
    assert.ok(performance.now() - t1 >= 150, "waited for a new event");
  });
});
