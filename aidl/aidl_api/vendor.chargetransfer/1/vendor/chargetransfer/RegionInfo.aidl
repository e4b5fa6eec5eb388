package vendor.chargetransfer;

/** A pool the service knows, its capacity, the heaps that feed it and who enforces its limits. */
@VintfStability
parcelable RegionInfo {
    @utf8InCpp String name;
    /** display, render, camera, codec, secure, vram, system. */
    @utf8InCpp String regionClass;
    long capacity;
    @utf8InCpp String[] heaps;
    /** "kernel", "service" or "nobody". */
    @utf8InCpp String enforcedBy;
    @utf8InCpp String why;
    /** Bytes charged in this pool across all cgroups. */
    long usage;
}
