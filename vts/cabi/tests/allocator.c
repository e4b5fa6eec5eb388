/*
 * An allocator written in C, linked with libchargetransfer_cabi.a through chargetransfer.h.
 *
 *   allocator rpc SOCKET        host tier: a charge before the service exists is deferred; once
 *                               the harness has started it (a line on stdin), the charge is
 *                               replayed, and calls get the service's typed answers.
 *   allocator binder OWNER SIZE DEADLINE_MS
 *                               kernel lane, as the gralloc uid: allocates a dma-buf from
 *                               /dev/dma_heap/system, charges it to OWNER, waits for a line on
 *                               stdin (the harness checks the ledger), releases it.
 *
 * Prints one line per step; exits 0 when every answer was the expected one.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chargetransfer.h"

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Waits up to `seconds` for `done(client)`. */
static int wait_until(ct_client *client, int (*done)(ct_client *), int seconds) {
    for (int i = 0; i < seconds * 100; i++) {
        if (done(client)) return 1;
        pause_ms(10);
    }
    return 0;
}

static int replayed(ct_client *c) { return ct_connected(c) && ct_pending(c) == 0; }
static int connected(ct_client *c) { return ct_connected(c); }

static void print(const char *what, ct_result r) {
    printf("%s: status %d code %d (%s) unavailable %d inode %lld size %lld owner %d\n", what, r.status, r.code,
           r.code ? ct_code_name(r.code) : "-", r.unavailable, (long long)r.inode, (long long)r.size, r.owner_pid);
    fflush(stdout);
}

static int host(const char *socket) {
    ct_client *client = ct_client_new_rpc(socket, 300, 0);
    if (!client) return 2;
    int buffer = memfd_create("buffer", MFD_CLOEXEC);
    ct_result r = ct_charge_on_behalf(client, buffer, getpid(), 0);
    print("before the service", r);
    int ok = r.status == CT_DEFERRED && r.unavailable == CT_NOT_CONNECTED && ct_pending(client) == 1;
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 2; /* the harness started the service */
    ok &= wait_until(client, replayed, 20);
    printf("replayed: %s\n", replayed(client) ? "yes" : "no");
    r = ct_charge_on_behalf(client, buffer, getpid(), 0);
    print("a memfd", r);
    ok &= r.status == CT_REFUSED && r.code == CT_E_NOT_DMA_BUF;
    r = ct_release(client, 12345, 0);
    print("release of an unknown buffer", r);
    ok &= r.status == CT_REFUSED && r.code == CT_E_NOT_CHARGED;
    ct_client_free(client);
    close(buffer);
    return ok ? 0 : 1;
}

static int lane(int owner, long size, unsigned deadline_ms) {
    int heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
    if (heap < 0) {
        printf("open /dev/dma_heap/system: %s\n", strerror(errno));
        return 2;
    }
    struct dma_heap_allocation_data alloc = {.len = (unsigned long long)size, .fd_flags = O_RDWR | O_CLOEXEC};
    if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &alloc) < 0) {
        printf("DMA_HEAP_IOCTL_ALLOC: %s\n", strerror(errno));
        return 2;
    }
    close(heap);
    int buffer = (int)alloc.fd;
    struct stat st;
    if (fstat(buffer, &st) < 0) return 2;
    ct_client *client = ct_client_new(NULL, deadline_ms, 0);
    if (!client) return 2;
    /* A real allocator would not wait; this program wants the service's own answer to show. */
    wait_until(client, connected, 20);
    ct_result r = ct_charge_on_behalf(client, buffer, owner, 0);
    print("charge on behalf", r);
    if (r.status == CT_DEFERRED) {
        wait_until(client, replayed, 20);
        printf("deferred, then replayed: %s\n", replayed(client) ? "yes" : "no");
    }
    int ok = r.status == CT_OK ? r.owner_pid == owner && r.inode == (int64_t)st.st_ino
                               : r.status == CT_DEFERRED && replayed(client);
    printf("ready inode %lld\n", (long long)st.st_ino);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 2; /* the harness checked the ledger */
    r = ct_release(client, (int64_t)st.st_ino, 0);
    print("release", r);
    ok &= r.status == CT_OK;
    ct_client_free(client);
    close(buffer);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "rpc") == 0) return host(argv[2]);
    if (argc == 5 && strcmp(argv[1], "binder") == 0) return lane(atoi(argv[2]), atol(argv[3]), (unsigned)atoi(argv[4]));
    fprintf(stderr, "usage: %s rpc SOCKET | binder OWNER_PID SIZE DEADLINE_MS\n", argv[0]);
    return 2;
}
