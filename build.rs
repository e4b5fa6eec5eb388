//! Generates the Rust binder stubs from the AIDL in aidl/, stamping IChargeTransfer with the
//! frozen version and hash so clients can ask the service which API it serves.

use std::path::Path;

const PACKAGE_DIR: &str = "aidl/vendor/chargetransfer";
const VERSION: i32 = 1;

fn main() {
    let hash_file = format!("aidl/aidl_api/vendor.chargetransfer/{VERSION}/.hash");
    let hash = std::fs::read_to_string(&hash_file).unwrap_or_else(|e| panic!("{hash_file}: {e}"));
    println!("cargo:rerun-if-changed=aidl");
    println!("cargo:rustc-env=CHARGETRANSFER_AIDL_HASH={}", hash.trim());
    println!("cargo:rustc-env=CHARGETRANSFER_AIDL_VERSION={VERSION}");
    let mut builder = rsbinder_aidl::Builder::new().include_dir("aidl");
    for name in
        ["ErrorCode", "IChargeClient", "PoolUsage", "UsageReport", "ChargeInfo", "RegionInfo", "ReconcileReport"]
    {
        builder = builder.source(Path::new(PACKAGE_DIR).join(format!("{name}.aidl")));
    }
    builder
        .source(Path::new(PACKAGE_DIR).join("IChargeTransfer.aidl"))
        .version(VERSION)
        .hash(hash.trim())
        .output("chargetransfer_aidl.rs")
        .generate()
        .expect("AIDL generation failed");
}
