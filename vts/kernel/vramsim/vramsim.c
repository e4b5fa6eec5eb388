// SPDX-License-Identifier: GPL-2.0
/*
 * vramsim: a simulated-VRAM test device for the chargetransfer dmem lane. Not a driver: no
 * hardware, no storage for resident bytes (VRAM is device memory, so resident buffers cost the
 * guest no RAM and the region may be larger than the guest's RAM).
 *
 * - registers the dmem region "drm/vramsim/vram" (module parameter size_mb) with the 7.3 API,
 *   with a reclaim callback;
 * - exports the dma-heap "vramsim": an allocation charges the allocating task's dmem pool
 *   (-EAGAIN past dmem.max, the kernel's own refusal); when the region itself is full it evicts
 *   the way TTM does (dmem_cgroup_state_evict_valuable: unprotected pools first, then those
 *   only low-protected, never min-protected) and fails with -ENOSPC if that is not enough;
 * - /dev/vramsim: ioctls to evict a buffer (its bytes move to zeroed system pages charged to a
 *   named cgroup's memcg with set_active_memcg + __GFP_ACCOUNT; the dmem charge is dropped),
 *   to restore it (charges the *calling* task's dmem pool: a driver restores on the app's next
 *   use, in its context), to pin and unpin it and to name its owner; read() lists the buffers.
 * - the reclaim callback (writing dmem.max below usage) evicts unpinned buffers of the limited
 *   pool's subtree, least recently allocated or restored first, honouring low protection first.
 *
 * Buffers are named by their dma-buf inode number (what the service calls a buffer).
 */
#include <linux/cgroup.h>
#include <linux/cgroup_dmem.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/memcontrol.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "vramsim.h"

static unsigned long size_mb = 256;
module_param(size_mb, ulong, 0444);
MODULE_PARM_DESC(size_mb, "size of the simulated VRAM region in MiB");

struct vbuf {
	struct list_head lru;		/* vram_lock; head = least recently allocated/restored */
	struct dma_buf *dmabuf;
	unsigned long ino;
	u64 size;
	struct dmem_cgroup_pool_state *pool;	/* the charged pool while resident */
	struct page **pages;			/* the system pages while evicted */
	struct mem_cgroup *owner;		/* whose memcg an eviction charges (a reference) */
	bool pinned;
};

static DEFINE_MUTEX(vram_lock);
static LIST_HEAD(vram_buffers);
static struct dmem_cgroup_region *vram_region;
static u64 vram_size, vram_resident;
static u64 reclaim_calls, reclaim_evicted_bytes, capacity_evicted_bytes;

static struct vbuf *find_locked(unsigned long ino)
{
	struct vbuf *b;

	list_for_each_entry(b, &vram_buffers, lru)
		if (b->ino == ino)
			return b;
	return NULL;
}

static void free_pages_of(struct vbuf *b)
{
	unsigned long i, n = b->size >> PAGE_SHIFT;

	for (i = 0; i < n && b->pages[i]; i++)
		__free_page(b->pages[i]);
	kvfree(b->pages);
	b->pages = NULL;
}

/* Move a resident, unpinned buffer to system pages charged to @memcg (its owner if NULL). */
static int evict_locked(struct vbuf *b, struct mem_cgroup *memcg)
{
	unsigned long i, n = b->size >> PAGE_SHIFT;
	struct mem_cgroup *old;

	if (!b->pool)
		return -EALREADY;
	if (b->pinned)
		return -EBUSY;
	b->pages = kvcalloc(n, sizeof(*b->pages), GFP_KERNEL);
	if (!b->pages)
		return -ENOMEM;
	old = set_active_memcg(memcg ?: b->owner);
	for (i = 0; i < n; i++) {
		b->pages[i] = alloc_page(GFP_KERNEL | __GFP_ACCOUNT | __GFP_ZERO | __GFP_NOWARN |
					 __GFP_RETRY_MAYFAIL);
		if (!b->pages[i])
			break;
	}
	set_active_memcg(old);
	if (i < n) {
		free_pages_of(b);
		return -ENOMEM;
	}
	dmem_cgroup_uncharge(b->pool, b->size);
	b->pool = NULL;
	vram_resident -= b->size;
	return 0;
}

/*
 * Evict unpinned buffers that @limit's subtree may lose (NULL: the whole region) until @target
 * bytes are free, oldest first; low-protected pools only when the unprotected ones are not
 * enough. Returns the bytes evicted.
 */
static u64 evict_for_locked(struct dmem_cgroup_pool_state *limit, u64 target)
{
	bool ignore_low = false, hit_low = false;
	struct vbuf *b, *next;
	u64 freed = 0;

	for (;;) {
		list_for_each_entry_safe(b, next, &vram_buffers, lru) {
			if (freed >= target)
				return freed;
			if (!b->pool || b->pinned ||
			    !dmem_cgroup_state_evict_valuable(limit, b->pool, ignore_low, &hit_low))
				continue;
			if (!evict_locked(b, NULL))
				freed += b->size;
		}
		if (freed >= target || ignore_low || !hit_low)
			return freed;
		ignore_low = true;
	}
}

static int vram_reclaim(struct dmem_cgroup_pool_state *pool, u64 target_bytes, void *priv)
{
	u64 freed;

	mutex_lock(&vram_lock);
	reclaim_calls++;
	freed = evict_for_locked(pool, target_bytes);
	reclaim_evicted_bytes += freed;
	mutex_unlock(&vram_lock);
	return freed ? 0 : -ENOSPC;
}

static const struct dmem_cgroup_ops vram_ops = { .reclaim = vram_reclaim };

/* Charge the calling task's pool and find room in the region for @b (vram_lock held). */
static int make_resident_locked(struct vbuf *b)
{
	struct dmem_cgroup_pool_state *pool;
	int ret;

	ret = dmem_cgroup_try_charge(vram_region, b->size, &pool, NULL);
	if (ret)
		return ret;
	/* @b is not resident yet (no pool), so it is never its own victim. */
	if (vram_resident + b->size > vram_size)
		capacity_evicted_bytes += evict_for_locked(NULL, vram_resident + b->size - vram_size);
	if (vram_resident + b->size > vram_size) {
		dmem_cgroup_uncharge(pool, b->size);
		return -ENOSPC;
	}
	b->pool = pool;
	vram_resident += b->size;
	list_move_tail(&b->lru, &vram_buffers);
	return 0;
}

static struct sg_table *vram_map(struct dma_buf_attachment *a, enum dma_data_direction dir)
{
	return ERR_PTR(-EOPNOTSUPP);	/* a test device: nothing can DMA to it */
}

static void vram_unmap(struct dma_buf_attachment *a, struct sg_table *sgt,
		       enum dma_data_direction dir)
{
}

static void vram_release(struct dma_buf *dmabuf)
{
	struct vbuf *b = dmabuf->priv;

	mutex_lock(&vram_lock);
	list_del(&b->lru);
	if (b->pool) {
		dmem_cgroup_uncharge(b->pool, b->size);
		vram_resident -= b->size;
	}
	mutex_unlock(&vram_lock);
	if (b->pages)
		free_pages_of(b);
	mem_cgroup_put(b->owner);
	kfree(b);
}

static const struct dma_buf_ops vram_buf_ops = {
	.map_dma_buf = vram_map,
	.unmap_dma_buf = vram_unmap,
	.release = vram_release,
};

static struct dma_buf *vram_allocate(struct dma_heap *heap, unsigned long len, u32 fd_flags,
				     u64 heap_flags)
{
	DEFINE_DMA_BUF_EXPORT_INFO(info);
	struct dma_buf *dmabuf;
	struct vbuf *b;
	int ret;

	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return ERR_PTR(-ENOMEM);
	b->size = PAGE_ALIGN(len);
	INIT_LIST_HEAD(&b->lru);
	b->owner = get_mem_cgroup_from_mm(current->mm);
	mutex_lock(&vram_lock);
	ret = make_resident_locked(b);
	mutex_unlock(&vram_lock);
	if (ret)
		goto err;
	info.exp_name = dma_heap_get_name(heap);
	info.ops = &vram_buf_ops;
	info.size = b->size;
	info.flags = fd_flags;
	info.priv = b;
	dmabuf = dma_buf_export(&info);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		mutex_lock(&vram_lock);
		list_del(&b->lru);
		dmem_cgroup_uncharge(b->pool, b->size);
		vram_resident -= b->size;
		mutex_unlock(&vram_lock);
		goto err;
	}
	b->dmabuf = dmabuf;
	b->ino = file_inode(dmabuf->file)->i_ino;
	return dmabuf;
err:
	mem_cgroup_put(b->owner);
	kfree(b);
	return ERR_PTR(ret);
}

static const struct dma_heap_ops vram_heap_ops = { .allocate = vram_allocate };

/* The memcg of the cgroup directory open at @fd, with a reference. */
static struct mem_cgroup *memcg_of_fd(int fd)
{
	struct cgroup_subsys_state *css;
	struct cgroup *cgrp;

	cgrp = cgroup_get_from_fd(fd);
	if (IS_ERR(cgrp))
		return ERR_CAST(cgrp);
	css = cgroup_get_e_css(cgrp, &memory_cgrp_subsys);
	cgroup_put(cgrp);
	return css ? mem_cgroup_from_css(css) : ERR_PTR(-ENOENT);
}

static long vram_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct mem_cgroup *memcg = NULL;
	struct vramsim_req req;
	struct vbuf *b;
	long ret;

	if (copy_from_user(&req, (void __user *)arg, sizeof(req)))
		return -EFAULT;
	if ((cmd == VRAMSIM_IOC_EVICT && req.cgroup_fd >= 0) || cmd == VRAMSIM_IOC_OWNER) {
		memcg = memcg_of_fd(req.cgroup_fd);
		if (IS_ERR(memcg))
			return PTR_ERR(memcg);
	}
	mutex_lock(&vram_lock);
	b = find_locked(req.ino);
	if (!b) {
		ret = -ENOENT;
		goto out;
	}
	switch (cmd) {
	case VRAMSIM_IOC_EVICT:
		ret = evict_locked(b, memcg);
		if (!ret && memcg)
			swap(b->owner, memcg);	/* the named cgroup owns it now */
		break;
	case VRAMSIM_IOC_RESTORE:
		if (!b->pages) {
			ret = -EALREADY;
			break;
		}
		ret = make_resident_locked(b);
		if (!ret)
			free_pages_of(b);
		break;
	case VRAMSIM_IOC_PIN:
	case VRAMSIM_IOC_UNPIN:
		if (!b->pool) {
			ret = -EINVAL;	/* only resident buffers are pinned */
			break;
		}
		b->pinned = cmd == VRAMSIM_IOC_PIN;
		ret = 0;
		break;
	case VRAMSIM_IOC_OWNER:
		swap(b->owner, memcg);
		ret = 0;
		break;
	default:
		ret = -ENOTTY;
	}
out:
	mutex_unlock(&vram_lock);
	mem_cgroup_put(memcg);
	return ret;
}

static int vram_show(struct seq_file *m, void *v)
{
	struct vbuf *b;

	mutex_lock(&vram_lock);
	seq_printf(m, "region drm/vramsim/vram size %llu resident %llu\n", vram_size, vram_resident);
	seq_printf(m, "reclaim calls %llu evicted %llu capacity_evicted %llu\n", reclaim_calls,
		   reclaim_evicted_bytes, capacity_evicted_bytes);
	list_for_each_entry(b, &vram_buffers, lru)
		seq_printf(m, "buffer %lu %llu %s %s\n", b->ino, b->size,
			   b->pool ? "resident" : "evicted", b->pinned ? "pinned" : "unpinned");
	mutex_unlock(&vram_lock);
	return 0;
}

static int vram_open(struct inode *inode, struct file *file)
{
	return single_open(file, vram_show, NULL);
}

static const struct file_operations vram_fops = {
	.owner = THIS_MODULE,
	.open = vram_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = single_release,
	.unlocked_ioctl = vram_ioctl,
};

static struct miscdevice vram_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vramsim",
	.fops = &vram_fops,
	.mode = 0600,
};

/* No exit: a dma-heap cannot be removed, so the module stays loaded. */
static int __init vramsim_init(void)
{
	struct dma_heap_export_info heap = { .name = "vramsim", .ops = &vram_heap_ops };
	struct dmem_cgroup_init init = { .ops = &vram_ops };
	struct dma_heap *h;
	int ret;

	vram_size = (u64)size_mb << 20;
	init.size = vram_size;
	vram_region = dmem_cgroup_register_region(&init, "drm/vramsim/vram");
	if (IS_ERR_OR_NULL(vram_region))
		return vram_region ? PTR_ERR(vram_region) : -ENODEV;
	ret = misc_register(&vram_misc);
	if (ret)
		goto err_region;
	h = dma_heap_add(&heap);
	if (IS_ERR(h)) {
		ret = PTR_ERR(h);
		goto err_misc;
	}
	pr_info("vramsim: region drm/vramsim/vram of %llu bytes, heap vramsim, /dev/vramsim\n",
		vram_size);
	return 0;
err_misc:
	misc_deregister(&vram_misc);
err_region:
	dmem_cgroup_unregister_region(vram_region);
	return ret;
}
module_init(vramsim_init);

MODULE_DESCRIPTION("Simulated VRAM test device for the chargetransfer dmem lane (not a driver)");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS("DMA_BUF");
MODULE_IMPORT_NS("DMA_BUF_HEAP");
