//! Host tier of the C ABI: `tests/allocator.c`, compiled with gcc against the static archive and
//! the header, talks to the real service over the RPC transport. The service starts only after the
//! program's first charge, which must come back deferred and be replayed once it is up.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The static archive cargo built for this test, beside the test binary's `deps` directory.
fn archive() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let a = dir.join("libchargetransfer_cabi.a");
    assert!(
        a.exists(),
        "{} not built: run `cargo build --workspace` before the tests (vts/run-all.sh does)",
        a.display()
    );
    a
}

fn compile(out: &Path) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("gcc")
        .args(["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(here.join("tests/allocator.c"))
        .arg("-I")
        .arg(here.join("include"))
        .arg(archive())
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");
}

/// Serves the service over RPC on `socket` from this process (its binary belongs to another package).
fn serve(socket: &Path) {
    let opts = <chargetransfer::daemon::Options as clap::Parser>::try_parse_from([
        "chargetransferd",
        "--rpc",
        socket.to_str().unwrap(),
        "--no-autoconfig",
        "--durability",
        "none",
        "--reconcile-secs",
        "0",
    ])
    .unwrap();
    std::thread::spawn(move || chargetransfer::daemon::run(opts));
}

#[test]
fn a_c_allocator_is_deferred_before_the_service_starts_then_gets_typed_answers() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("allocator");
    compile(&program);
    let socket = dir.path().join("ct.sock");
    let mut child = Command::new(&program)
        .args(["rpc", socket.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("before the service: status 1 code 0 (-) unavailable 1"), "{first}");

    serve(&socket);
    writeln!(child.stdin.as_mut().unwrap(), "started").unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest[0], "replayed: yes", "{rest:?}");
    assert!(rest[1].starts_with("a memfd: status 2 code 1 (NOT_DMA_BUF)"), "{rest:?}");
    assert!(rest[2].starts_with("release of an unknown buffer: status 2 code 7 (NOT_CHARGED)"), "{rest:?}");
    assert!(status.success(), "{status}: {rest:?}");
}
