package vendor.chargetransfer;

/** One charged buffer: what the service learned from the fd, and who pays. */
@VintfStability
parcelable ChargeInfo {
    /** The dma-buf's inode: its identity across processes. */
    long inode;
    long size;
    @utf8InCpp String heap;
    /** The process that pays; 0 when the charge is parked on ownerCgroup (its processes are gone). */
    int ownerPid;
    int ownerUid;
    @utf8InCpp String ownerCgroup;
    /** The pools charged now ("memcg", "cma/reserved", ...). */
    @utf8InCpp String[] pools;
    boolean evicted;
    boolean pinned;
}
