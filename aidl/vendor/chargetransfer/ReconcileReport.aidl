package vendor.chargetransfer;

/** What a reconcile pass against the procfs truth found and fixed. */
@VintfStability
parcelable ReconcileReport {
    /** Charged buffers that no process holds any more: released. */
    long[] releasedInodes;
    /**
     * Charges moved to a holder: the owner died, or let go of the buffer while others still hold
     * it (the handoff rule), or a push's receiver never held it and it went back to its maker.
     */
    long[] movedInodes;
    /** Live dma-bufs that nobody charged (unaccounted allocations). */
    long[] unaccountedInodes;
    long unaccountedBytes;
    /** Processes whose cgroup changed; their charges followed them. */
    int[] migratedPids;
    int processesScanned;
    int buffersSeen;
}
