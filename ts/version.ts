/** The product version (the overlay format has its own version). */

/** Package version recorded as the overlay's creator. */
export const CLOUDLET_VERSION = "0.1.0";
