package vendor.chargetransfer;

/** One pool (memcg or a dmem region) of one cgroup, as the ledger counts it. Bytes; -1 = no limit. */
@VintfStability
parcelable PoolUsage {
    @utf8InCpp String pool;
    long usage;
    long peak;
    long max = -1;
    long low;
    long min;
    long pinned;
    long pinMax = -1;
    /** Charges that went over max in observe mode or on migration. */
    long maxEvents;
    /** What the kernel itself reports for this cgroup and pool (memory.current / dmem.current), -1 if unknown. */
    long kernelUsage = -1;
}
