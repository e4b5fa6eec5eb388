//! Placeholder replaced below.
pub fn run(_out: &std::path::Path) -> Result<(), String> { Err("demo not yet written".into()) }
