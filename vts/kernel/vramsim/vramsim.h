/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* The /dev/vramsim ioctls (see vramsim.c); mirrored in vts/src/vram_cases.rs. */
#ifndef _VRAMSIM_H
#define _VRAMSIM_H

#include <linux/ioctl.h>
#include <linux/types.h>

struct vramsim_req {
	__u64 ino;		/* the buffer's dma-buf inode number */
	__s32 cgroup_fd;	/* EVICT (-1: the recorded owner), OWNER: a cgroup directory fd */
	__u32 pad;
};

#define VRAMSIM_IOC_EVICT	_IOW('V', 1, struct vramsim_req)
#define VRAMSIM_IOC_RESTORE	_IOW('V', 2, struct vramsim_req)
#define VRAMSIM_IOC_PIN		_IOW('V', 3, struct vramsim_req)
#define VRAMSIM_IOC_UNPIN	_IOW('V', 4, struct vramsim_req)
#define VRAMSIM_IOC_OWNER	_IOW('V', 5, struct vramsim_req)

#endif
