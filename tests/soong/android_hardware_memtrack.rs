//! Stand-in for the crate Soong's AIDL rust backend would generate from AOSP's
//! hardware/interfaces/memtrack/aidl (module `android.hardware.memtrack-V1-rust`, crate
//! `android_hardware_memtrack`): the module path and the items src/binder.rs names under
//! `--cfg soong`, with the signatures the backend generates. Type-checked only, never run.

pub mod aidl {
    pub mod android {
        pub mod hardware {
            pub mod memtrack {
                #[allow(non_snake_case)]
                pub mod IMemtrack {
                    pub trait IMemtrack: binder::Interface {}
                    pub struct BnMemtrack;
                    impl BnMemtrack {
                        pub fn new_binder<T: IMemtrack + Sync + Send + 'static>(
                            _inner: T,
                            _features: binder::BinderFeatures,
                        ) -> binder::Strong<dyn IMemtrack> {
                            unimplemented!("stand-in")
                        }
                    }
                    impl binder::FromIBinder for dyn IMemtrack {
                        fn try_from(
                            _ibinder: binder::SpIBinder,
                        ) -> std::result::Result<binder::Strong<dyn IMemtrack>, binder::StatusCode> {
                            unimplemented!("stand-in")
                        }
                    }
                }
            }
        }
    }
}
