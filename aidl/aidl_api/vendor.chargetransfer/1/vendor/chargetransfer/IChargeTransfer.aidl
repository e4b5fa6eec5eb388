///////////////////////////////////////////////////////////////////////////////
// THIS FILE IS IMMUTABLE. DO NOT EDIT IN ANY CASE.                          //
///////////////////////////////////////////////////////////////////////////////

// This file is a snapshot of an AIDL file. Do not edit it manually. There are
// two cases:
// 1). this is a frozen version file - do not edit this in any case.
// 2). this is a 'current' file. If you make a backwards compatible change to
//     the interface (from the latest frozen version), the build system will
//     prompt you to update this file with `m <name>-update-api`.
//
// You must not make a backward incompatible change to any AIDL file built
// with the aidl_interface module type with versions property set. The module
// type is used to build AIDL files in a way that they can be used across
// independently updatable components of the system. If a device is shipped
// with such a backward incompatible change, it has a high risk of breaking
// later when a module using the interface is updated, e.g., Mainline modules.

package vendor.chargetransfer;
@VintfStability
interface IChargeTransfer {
  vendor.chargetransfer.ChargeInfo charge(in ParcelFileDescriptor buffer);
  vendor.chargetransfer.ChargeInfo chargeOnBehalf(in ParcelFileDescriptor buffer, int ownerPid);
  void release(long inode);
  vendor.chargetransfer.ChargeInfo transfer(in ParcelFileDescriptor buffer, int toPid);
  long offer(in ParcelFileDescriptor buffer, int toPid, int ttlMillis);
  vendor.chargetransfer.ChargeInfo accept(long ticket, in ParcelFileDescriptor buffer);
  void registerClient(IBinder token);
  vendor.chargetransfer.UsageReport getProcessUsage(int pid);
  vendor.chargetransfer.UsageReport getUidUsage(int uid);
  vendor.chargetransfer.UsageReport getCgroupUsage(@utf8InCpp String cgroup);
  vendor.chargetransfer.ChargeInfo[] listCharges(int pid);
  vendor.chargetransfer.RegionInfo[] getRegions();
  void evict(long inode);
  void restore(long inode);
  void pin(long inode);
  void unpin(long inode);
  long[] evictionAdvice(@utf8InCpp String region, long bytes);
  vendor.chargetransfer.ReconcileReport reconcile();
  @utf8InCpp String autoconfigure(boolean dryRun, boolean json);
  @utf8InCpp String dumpState();
  void ping();
}
