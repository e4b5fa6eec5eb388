//! Logging: logcat on Android, stderr elsewhere (filter with RUST_LOG, default info).

/// Installs the logger and a panic hook that logs the panic before the default hook runs, so a
/// crash of a binder thread is visible in logcat.
pub fn init(tag: &str) {
    #[cfg(target_os = "android")]
    android_logger::init_once(android_logger::Config::default().with_tag(tag).with_max_level(log::LevelFilter::Info));
    #[cfg(not(target_os = "android"))]
    {
        let _ = tag;
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_timestamp_millis()
            .try_init();
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        default(info);
    }));
}
