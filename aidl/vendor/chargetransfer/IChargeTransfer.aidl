package vendor.chargetransfer;

import vendor.chargetransfer.ChargeInfo;
import vendor.chargetransfer.ReconcileReport;
import vendor.chargetransfer.RegionInfo;
import vendor.chargetransfer.UsageReport;

/**
 * Charges dma-buf allocations to the process that asked for them, in memcg and in dmem, and
 * moves the charge when a buffer is handed to another process.
 *
 * Identity is always the binder caller (calling pid/uid); no argument can claim to be someone
 * else. A buffer is always presented as an fd, so the service reads its size, exporter and inode
 * itself. Errors are ServiceSpecificExceptions with an ErrorCode.
 *
 * pid 0 names no process, in arguments as in ChargeInfo.ownerPid (a charge parked on a cgroup
 * whose processes are gone). Where a call needs a process (chargeOnBehalf, transfer, offer,
 * getProcessUsage) pid 0 is INVALID_ARGUMENT; listCharges takes it as "no process filter".
 */
@VintfStability
interface IChargeTransfer {
    /** Charge a buffer to the caller itself. */
    ChargeInfo charge(in ParcelFileDescriptor buffer);

    /**
     * Charge a buffer on behalf of another process (gralloc allocating for an app). Trusted
     * callers only; `ownerPid` must be alive.
     */
    ChargeInfo chargeOnBehalf(in ParcelFileDescriptor buffer, int ownerPid);

    /** Release a charge: its owner, or a trusted caller. */
    void release(long inode);

    /**
     * Trusted push: move the charge of `buffer` to `toPid`, which must be alive, whoever pays for
     * it now (the SurfaceFlinger double hop). Trusted callers only (NOT_TRUSTED otherwise): an
     * owner that is not trusted hands its charge over with offer and accept, with the receiver's
     * consent.
     */
    ChargeInfo transfer(in ParcelFileDescriptor buffer, int toPid);

    /**
     * Offer the caller's charge for `buffer` to `toPid`. Returns a ticket bound to the buffer,
     * the receiver and an expiry `ttlMillis` from now. `ttlMillis` must be positive
     * (INVALID_ARGUMENT otherwise) and is capped at 60000: a longer ttl is accepted and the offer
     * expires after 60 s. Unaccepted offers expire and the charge stays put.
     */
    long offer(in ParcelFileDescriptor buffer, int toPid, int ttlMillis);

    /** The receiver accepts an offer, presenting the ticket and the buffer fd it received. */
    ChargeInfo accept(long ticket, in ParcelFileDescriptor buffer);

    /**
     * Register a token whose death releases (or hands over) the caller's charges at once;
     * without one, the service notices the death by polling pidfds.
     */
    void registerClient(IBinder token);

    /**
     * Usage of a process (pid > 0; pid 0 is INVALID_ARGUMENT), a uid (its uid_<uid> cgroup) or a
     * cgroup path.
     */
    UsageReport getProcessUsage(int pid);
    UsageReport getUidUsage(int uid);
    UsageReport getCgroupUsage(@utf8InCpp String cgroup);

    /**
     * The buffers charged to a process (pid > 0), or with pid 0 (no process filter) every
     * charge, those parked on a cgroup (ownerPid 0) included. Biggest first.
     */
    ChargeInfo[] listCharges(int pid);

    RegionInfo[] getRegions();

    /** A vram buffer was evicted to system memory: dmem released, the owner's memcg charged. Trusted. */
    void evict(long inode);
    /** The buffer is back in vram; refused at the owner's dmem max. Trusted. */
    void restore(long inode);
    /** Pin / unpin a vram buffer, counted against the owner's pin limit. Trusted. */
    void pin(long inode);
    void unpin(long inode);
    /** Which buffers to evict first to free `bytes` in `region`, honouring dmem min/low. */
    long[] evictionAdvice(@utf8InCpp String region, long bytes);

    /** Compare the ledger with the procfs truth and repair it. Trusted. */
    ReconcileReport reconcile();

    /** Probe the device, recompute and apply limits; returns the report (text, or JSON). Trusted. */
    @utf8InCpp String autoconfigure(boolean dryRun, boolean json);

    /** dumpsys-style text: per-owner table, per-region totals, biggest buffers. */
    @utf8InCpp String dumpState();

    /** Does nothing: the baseline for call-cost measurements. */
    void ping();
}
