//! vendor.chargetransfer-service: the charge-transfer HAL service.

use clap::Parser;

fn main() {
    chargetransfer::logging::init("chargetransferd");
    let opts = chargetransfer::daemon::Options::parse();
    if let Err(e) = chargetransfer::daemon::run(opts) {
        eprintln!("chargetransferd: {e}");
        std::process::exit(1);
    }
}
