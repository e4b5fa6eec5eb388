package vendor.chargetransfer;

/** What a reconcile pass against the procfs truth found and fixed. */
@VintfStability
parcelable ReconcileReport {
    /** Charged buffers that no process holds any more: released. */
    long[] releasedInodes;
    /** Charges whose owner died while others still hold the buffer: moved by the handoff rule. */
    long[] movedInodes;
    /** Live dma-bufs that nobody charged (unaccounted allocations). */
    long[] unaccountedInodes;
    long unaccountedBytes;
    /** Processes whose cgroup changed; their charges followed them. */
    int[] migratedPids;
    int processesScanned;
    int buffersSeen;
}
