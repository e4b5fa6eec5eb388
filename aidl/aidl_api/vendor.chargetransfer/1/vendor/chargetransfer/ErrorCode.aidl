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
@Backing(type="int") @VintfStability
enum ErrorCode {
  NOT_DMA_BUF = 1,
  UNKNOWN_HEAP = 2,
  OVER_LIMIT = 3,
  NOT_OWNER = 4,
  NOT_TRUSTED = 5,
  NO_SUCH_PROCESS = 6,
  NOT_CHARGED = 7,
  ALREADY_CHARGED = 8,
  INVALID_ARGUMENT = 9,
  BAD_TICKET = 10,
  OVER_PIN_LIMIT = 11,
  INVALID_STATE = 12,
  NOT_HOLDER = 13,
  INTERNAL = 14,
}
