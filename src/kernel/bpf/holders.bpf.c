// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Who holds which dma-buf, in four BPF iterators (one read of each replaces the whole procfs
 * scan):
 *   iter/task_file  every open dma-buf file: tgid, fd, inode;
 *   iter/task       every process (thread group leader): tgid, to count them as procfs does;
 *   iter/dmabuf     every live buffer: inode, size, whether it is mapped, exporter, name;
 *   iter/task_vma   every mapping of a dma-buf: tgid, tid, start, inode (read only when
 *                   iter/dmabuf saw a mapped buffer: it visits every VMA of every process).
 * Each writes binary records with bpf_seq_write; src/kernel/bpf/records.rs reads them and must
 * change with them.
 *
 * CO-RE: the structs below are hand-declared with only the fields read, marked
 * preserve_access_index, so the loader relocates each access against the running kernel's BTF
 * (no vmlinux.h to generate, and one object serves every kernel with BTF and iter/dmabuf).
 */

typedef unsigned char __u8;
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
struct rb_node;
struct rb_root_cached { struct rb_node *rb_leftmost; } CORE;
struct address_space { struct rb_root_cached i_mmap; } CORE;
struct file { struct inode *f_inode; struct address_space *f_mapping; } CORE;
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

/* The header (inode to name_len) is followed by exporter_len bytes of the exporter's name and
 * name_len bytes of the buffer's name (no NULs): most buffers have a short exporter and no name,
 * and each bpf_seq_write costs about as much as the walk's step to the next buffer, so the
 * header and the exporter go out in one write. */
struct buffer_record {
    __u64 inode;
    __u64 size;
    __u8 mapped;
    __u8 exporter_len;
    __u8 name_len;
    char exporter[EXPORTER_LEN];
} __attribute__((packed));

#define BUFFER_HEADER_LEN (sizeof(struct buffer_record) - EXPORTER_LEN)

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

/* A kernel string into buf (size a power of two), its length without the NUL; 0 if absent. */
static __attribute__((always_inline)) __u32 read_str(char *buf, __u32 size, const char *src)
{
    long n;

    if (!src)
        return 0;
    n = bpf_probe_read_kernel_str(buf, size, src);
    return n > 1 ? (n - 1) & (size - 1) : 0;
}

SEC("iter/dmabuf")
int buffers(struct bpf_iter__dmabuf *ctx)
{
    struct dma_buf *dmabuf = ctx->dmabuf;
    struct seq_file *seq = ctx->meta->seq;
    struct buffer_record r = {};
    char name[DMA_BUF_NAME_LEN];
    __u32 exporter_len, name_len;

    if (!dmabuf || !dmabuf->file)
        return 0;
    r.inode = dmabuf->file->f_inode->i_ino;
    r.size = dmabuf->size;
    /* Some process maps it: its mapping's tree of VMAs is not empty. */
    r.mapped = dmabuf->file->f_mapping && dmabuf->file->f_mapping->i_mmap.rb_leftmost;
    exporter_len = read_str(r.exporter, sizeof(r.exporter), dmabuf->exp_name);
    /* Read without name_lock, as the kernel's own selftest does: a rename racing the read
     * gives either name, and the next scan the new one. */
    name_len = read_str(name, sizeof(name), dmabuf->name);
    r.exporter_len = exporter_len;
    r.name_len = name_len;
    bpf_seq_write(seq, &r, BUFFER_HEADER_LEN + exporter_len);
    if (name_len)
        bpf_seq_write(seq, name, name_len);
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
