/*
 * chargetransfer allocator ABI: charge a dma-buf to the app it was allocated for, push a charge,
 * release one, each bounded by a deadline and never failing because the service is away.
 *
 * Link libchargetransfer_cabi.a (built by `cargo build -p chargetransfer-cabi`) with
 * -lpthread -ldl -lm. Every call answers within its deadline with one of:
 *   CT_OK        the service answered: done.
 *   CT_REFUSED   a typed refusal in `code` (CT_E_*). CT_E_OVER_LIMIT: free the buffer and fail the
 *                allocation. Others are caller bugs (not a dma-buf, not trusted, no such process).
 *   CT_DEFERRED  the service is unavailable (reason in `unavailable`): proceed with the allocation.
 *                The charge is queued and replayed when the service is back; what the queue cannot
 *                replay the service catches up itself, charging a holder of the buffer.
 *   CT_ERROR     the call never left this process (a null client, a closed fd).
 */
#ifndef CHARGETRANSFER_H
#define CHARGETRANSFER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ct_client ct_client;

typedef enum {
    CT_OK = 0,
    CT_DEFERRED = 1,
    CT_REFUSED = 2,
    CT_ERROR = 3,
} ct_status;

/* Why a call was deferred. */
typedef enum {
    CT_AVAILABLE = 0,
    CT_NOT_CONNECTED = 1, /* not registered yet (boot) or not reconnected yet (restart) */
    CT_DIED = 2,          /* the service died under the call */
    CT_DEADLINE_PASSED = 3,
    CT_BUSY = 4, /* every call worker is still blocked in earlier calls */
} ct_unavailable;

/* vendor.chargetransfer ErrorCode values, in `code` when the status is CT_REFUSED. */
#define CT_E_NOT_DMA_BUF 1
#define CT_E_UNKNOWN_HEAP 2
#define CT_E_OVER_LIMIT 3
#define CT_E_NOT_OWNER 4
#define CT_E_NOT_TRUSTED 5
#define CT_E_NO_SUCH_PROCESS 6
#define CT_E_NOT_CHARGED 7
#define CT_E_ALREADY_CHARGED 8
#define CT_E_INVALID_ARGUMENT 9
#define CT_E_BAD_TICKET 10
#define CT_E_OVER_PIN_LIMIT 11
#define CT_E_INVALID_STATE 12
#define CT_E_NOT_HOLDER 13
#define CT_E_INTERNAL 14

typedef struct {
    ct_status status;
    int32_t code;               /* CT_E_* when CT_REFUSED, else 0 */
    ct_unavailable unavailable; /* when CT_DEFERRED, else CT_AVAILABLE */
    int64_t inode;              /* the buffer, when CT_OK (charge, transfer) */
    int64_t size;
    int32_t owner_pid; /* who pays now, when CT_OK */
} ct_result;

/* Connects in the background over the kernel binder driver (`device` NULL: the default);
 * returns at once, before the service is registered if need be. `deadline_ms` 0 takes the
 * default (4 ms: a quarter of a 60 Hz frame); `queue_capacity` 0 takes 256. NULL on failure. */
ct_client *ct_client_new(const char *device, uint32_t deadline_ms, uint32_t queue_capacity);
/* The same over binder's RPC transport on a unix socket (hosts without binder). */
ct_client *ct_client_new_rpc(const char *socket_path, uint32_t deadline_ms, uint32_t queue_capacity);
void ct_client_free(ct_client *client);

/* `deadline_ms` 0: the client's deadline. The fd stays the caller's. */
ct_result ct_charge_on_behalf(ct_client *client, int buffer_fd, int32_t owner_pid, uint32_t deadline_ms);
ct_result ct_transfer(ct_client *client, int buffer_fd, int32_t to_pid, uint32_t deadline_ms);
ct_result ct_release(ct_client *client, int64_t inode, uint32_t deadline_ms);

/* Deferred charges waiting for replay. */
uint32_t ct_pending(const ct_client *client);
/* 1 while connected to the service. */
int ct_connected(const ct_client *client);
/* "OVER_LIMIT" for CT_E_OVER_LIMIT; a static string, never NULL. */
const char *ct_code_name(int32_t code);

#ifdef __cplusplus
}
#endif

#endif /* CHARGETRANSFER_H */
