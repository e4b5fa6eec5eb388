package vendor.chargetransfer;

/**
 * ServiceSpecificException codes returned by IChargeTransfer. Every refusal carries one of these
 * plus a message naming the buffer, process or limit involved.
 */
@VintfStability
@Backing(type="int")
enum ErrorCode {
    /** The fd is not a dma-buf (pipe, memfd, socket, closed number, ...). */
    NOT_DMA_BUF = 1,
    /** The buffer's exporter is not a heap the policy knows. */
    UNKNOWN_HEAP = 2,
    /** A memcg or dmem limit of the owner (or an ancestor) would be exceeded. */
    OVER_LIMIT = 3,
    /** The caller does not own the buffer's charge. */
    NOT_OWNER = 4,
    /** Only trusted allocator/compositor callers may do this. */
    NOT_TRUSTED = 5,
    /** The target process does not exist or has exited. */
    NO_SUCH_PROCESS = 6,
    /** No charge is recorded for this buffer. */
    NOT_CHARGED = 7,
    /** The buffer is already charged (to the caller or to someone else). */
    ALREADY_CHARGED = 8,
    /** A malformed argument (negative size, bad cgroup path, ...). */
    INVALID_ARGUMENT = 9,
    /** The transfer ticket is unknown, expired, already used, or meant for another receiver or buffer. */
    BAD_TICKET = 10,
    /** The pin limit of the owner's region would be exceeded. */
    OVER_PIN_LIMIT = 11,
    /** The operation does not fit the buffer's state (evict a pinned buffer, restore a resident one, ...). */
    INVALID_STATE = 12,
    /**
     * Reserved; no call returns it. A push or an on-behalf charge is accepted before the receiver
     * holds the buffer (gralloc charges before it sends the fd); a receiver that never comes to
     * hold it stops paying at the reconcile after a grace period, when the charge goes back to
     * whoever made it.
     */
    NOT_HOLDER = 13,
    /**
     * Something failed that the caller cannot fix: a kernel file the service needed could not be
     * read, or the journal could not record the change. Either way nothing changed. A journal
     * that cannot be written stays broken: every later change fails with INTERNAL until the
     * service restarts, queries keep working, and dumpState says why.
     */
    INTERNAL = 14,
}
