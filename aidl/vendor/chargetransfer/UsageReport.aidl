package vendor.chargetransfer;

import vendor.chargetransfer.PoolUsage;

/** Usage of a process, uid or cgroup: one entry per pool, plus the buffers counted. */
@VintfStability
parcelable UsageReport {
    /** The cgroup the numbers belong to ("/uid_10001/pid_123"); for a uid, its uid_<uid> cgroup. */
    @utf8InCpp String cgroup;
    PoolUsage[] pools;
    /** Live buffers charged to the process (pid query), the uid or the cgroup subtree. */
    int bufferCount;
    /** Bytes of those buffers. */
    long bufferBytes;
}
