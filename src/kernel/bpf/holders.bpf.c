// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Who holds which dma-buf, in three BPF iterators (one read of each replaces the whole procfs
 * scan):
 *   iter/dmabuf     every live buffer: inode, size, exporter, name;
 *   iter/task_file  every open dma-buf file: tgid, fd, inode;
 *   iter/task_vma   every mapping of a dma-buf: tgid, tid, start, inode;
 *   iter/task       every process (thread group leader): tgid, to count them as procfs does.
 * Each writes fixed-size binary records with bpf_seq_write; src/kernel/bpf/records.rs reads them
 * and must change with them.
 *
 * CO-RE: the structs below are hand-declared with only the fields read, marked
 * preserve_access_index, so the loader relocates each access against the running kernel's BTF
 * (no vmlinux.h to generate, and one object serves every kernel with BTF and iter/dmabuf).
 */

typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef __u64 u64;
typedef __u32 u32;

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))

/* include/uapi/linux/magic.h: the dma-buf pseudo filesystem's superblock magic. */
#define DMA_BUF_MAGIC 0x444d4142
/* include/uapi/linux/dma-buf.h: names are at most this long, NUL included. */
#define DMA_BUF_NAME_LEN 32
#define EXPORTER_LEN 64

struct seq_file;
struct super_block { unsigned long s_magic; } CORE;
struct inode { unsigned long i_ino; struct super_block *i_sb; } CORE;
struct file { struct inode *f_inode; } CORE;
struct dma_buf { unsigned long size; struct file *file; const char *exp_name; const char *name; } CORE;
struct task_struct { int pid; int tgid; } CORE;
struct vm_area_struct { unsigned long vm_start; struct file *vm_file; } CORE;
struct bpf_iter_meta { struct seq_file *seq; } CORE;
struct bpf_iter__dmabuf { struct bpf_iter_meta *meta; struct dma_buf *dmabuf; } CORE;
struct bpf_iter__task_file { struct bpf_iter_meta *meta; struct task_struct *task; u32 fd; struct file *file; } CORE;
struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; } CORE;
struct bpf_iter__task_vma { struct bpf_iter_meta *meta; struct task_struct *task; struct vm_area_struct *vma; } CORE;

/* Helper ids from include/uapi/linux/bpf.h (stable ABI). */
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *src) = (void *)115;
static long (*bpf_seq_write)(struct seq_file *m, const void *data, __u32 len) = (void *)127;

struct buffer_record {
    __u64 inode;
    __u64 size;
    char exporter[EXPORTER_LEN];
    char name[DMA_BUF_NAME_LEN];
};

struct fd_record {
    __u32 tgid;
    __u32 fd;
    __u64 inode;
};

struct vma_record {
    __u32 tgid;
    __u32 tid;
    __u64 start;
    __u64 inode;
};

struct process_record {
    __u32 tgid;
};

static __attribute__((always_inline)) int is_dmabuf(struct file *file)
{
    return file && file->f_inode && file->f_inode->i_sb && file->f_inode->i_sb->s_magic == DMA_BUF_MAGIC;
}

SEC("iter/dmabuf")
int buffers(struct bpf_iter__dmabuf *ctx)
{
    struct dma_buf *dmabuf = ctx->dmabuf;
    struct buffer_record r = {};

    if (!dmabuf || !dmabuf->file)
        return 0;
    r.inode = dmabuf->file->f_inode->i_ino;
    r.size = dmabuf->size;
    if (dmabuf->exp_name)
        bpf_probe_read_kernel_str(r.exporter, sizeof(r.exporter), dmabuf->exp_name);
    /* Read without name_lock, as the kernel's own selftest does: a rename racing the read
     * gives either name, and the next scan the new one. */
    if (dmabuf->name)
        bpf_probe_read_kernel_str(r.name, sizeof(r.name), dmabuf->name);
    bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
    return 0;
}

SEC("iter/task_file")
int fds(struct bpf_iter__task_file *ctx)
{
    struct task_struct *task = ctx->task;
    struct file *file = ctx->file;
    struct fd_record r = {};

    if (!task || !is_dmabuf(file))
        return 0;
    r.tgid = task->tgid;
    r.fd = ctx->fd;
    r.inode = file->f_inode->i_ino;
    bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
    return 0;
}

SEC("iter/task_vma")
int mappings(struct bpf_iter__task_vma *ctx)
{
    struct task_struct *task = ctx->task;
    struct vm_area_struct *vma = ctx->vma;
    struct vma_record r = {};

    if (!task || !vma || !is_dmabuf(vma->vm_file))
        return 0;
    r.tgid = task->tgid;
    r.tid = task->pid;
    r.start = vma->vm_start;
    r.inode = vma->vm_file->f_inode->i_ino;
    bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
    return 0;
}

SEC("iter/task")
int processes(struct bpf_iter__task *ctx)
{
    struct task_struct *task = ctx->task;
    struct process_record r = {};

    if (!task || task->pid != task->tgid)
        return 0;
    r.tgid = task->tgid;
    bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
