/** `cloudlet guest`: build (or show) the built-in tiny guest: Debian kernel, busybox initramfs, debootstrap minbase root file system. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { buildGuestImage } from "../../ts/vm/guest_image.ts";
import { homePaths } from "../../ts/home/paths.ts";
import { controller, type Common, bar, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("guest", "Build (or show) the built-in tiny guest: Debian kernel, busybox initramfs, debootstrap minbase root file system")
    .action(async (o: Common) => {
      const p = bar(o);
      const g = await buildGuestImage({ cacheDir: homePaths(cloudletHome(o.home)).guest, signal: controller.signal, onProgress: (x) => {
        // A cached guest reports one finished step: no bar for work not done.
        if (x.detail !== "cached") p.update({ phase: x.phase, done: x.done, total: x.total });
      } });
      p.done();
      out(o, g, `guest: kernel ${g.kernelVersion}\n  ${g.kernel}\n  ${g.initrd}\n  ${g.rootfs}`);
    });
}
