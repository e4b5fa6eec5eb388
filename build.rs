//! Generates the Rust binder stubs from the AIDL in aidl/, stamping IChargeTransfer with the
//! frozen version and hash so clients can ask the service which API it serves, and the stubs of
//! AOSP's android.hardware.memtrack (its frozen version 1 and hash, as AOSP serves them).

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE_DIR: &str = "aidl/vendor/chargetransfer";
const VERSION: i32 = 1;

fn main() {
    bpf_object();
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
    memtrack_stubs();
}

/// IMemtrack, from the copy of AOSP's hardware/interfaces/memtrack/aidl in
/// aidl/android/hardware/memtrack (frozen as version 1 under aidl/aidl_api; tests/android_files.rs
/// checks the copy against AOSP's hash).
fn memtrack_stubs() {
    const DIR: &str = "aidl/android/hardware/memtrack";
    let hash_file = "aidl/aidl_api/android.hardware.memtrack/1/.hash";
    let hash = std::fs::read_to_string(hash_file).unwrap_or_else(|e| panic!("{hash_file}: {e}"));
    let mut builder = rsbinder_aidl::Builder::new().include_dir("aidl");
    for name in ["DeviceInfo", "MemtrackRecord", "MemtrackType"] {
        builder = builder.source(Path::new(DIR).join(format!("{name}.aidl")));
    }
    builder
        .source(Path::new(DIR).join("IMemtrack.aidl"))
        .version(1)
        .hash(hash.trim())
        .output("memtrack_aidl.rs")
        .generate()
        .expect("memtrack AIDL generation failed");
}

/// Compiles the BPF holder iterators (src/kernel/bpf/holders.bpf.c) with clang when it is there,
/// and sets `cfg(chargetransfer_bpf)` so the object is built in. Without clang (a fresh machine
/// running the demo) the service is built without it and reports the BPF backend absent;
/// vts/build-guest.sh sets CHARGETRANSFER_BPF=required so the lane binaries always carry it. On
/// Android the object is Soong's `bpf` module, pinned by bpfloader: nothing is built in.
fn bpf_object() {
    const SOURCE: &str = "src/kernel/bpf/holders.bpf.c";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CHARGETRANSFER_BPF");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo::rustc-check-cfg=cfg(chargetransfer_bpf)");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("android") {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("holders.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let built = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-c", SOURCE, "-o"])
        .arg(&out)
        .status()
        .map_err(|e| e.to_string())
        .and_then(|s| if s.success() { Ok(()) } else { Err(s.to_string()) });
    match built {
        Ok(()) => println!("cargo:rustc-cfg=chargetransfer_bpf"),
        Err(e) if std::env::var("CHARGETRANSFER_BPF").as_deref() == Ok("required") => {
            panic!("{clang} could not compile {SOURCE}: {e}")
        }
        Err(e) => println!("cargo:warning=built without the BPF backend ({clang}: {e}); procfs scans only"),
    }
}
