//! Stand-in for the crate Soong's AIDL rust backend generates from aidl/ (module
//! `vendor.chargetransfer-V1-rust`, crate `vendor_chargetransfer`): the module path and the
//! items src/binder.rs names under `--cfg soong`, with the signatures the backend generates
//! (system/tools/aidl generate_rust.cpp). Type-checked only, never run (tests/android_files.rs).

pub mod aidl {
    pub mod vendor {
        pub mod chargetransfer {
            #[allow(non_snake_case)]
            pub mod IChargeTransfer {
                pub trait IChargeTransfer: binder::Interface {}
                pub struct BnChargeTransfer;
                impl BnChargeTransfer {
                    pub fn new_binder<T: IChargeTransfer + Sync + Send + 'static>(
                        _inner: T,
                        _features: binder::BinderFeatures,
                    ) -> binder::Strong<dyn IChargeTransfer> {
                        unimplemented!("stand-in")
                    }
                }
                impl binder::FromIBinder for dyn IChargeTransfer {
                    fn try_from(
                        _ibinder: binder::SpIBinder,
                    ) -> std::result::Result<binder::Strong<dyn IChargeTransfer>, binder::StatusCode> {
                        unimplemented!("stand-in")
                    }
                }
            }
            #[allow(non_snake_case)]
            pub mod IChargeClient {
                pub trait IChargeClient: binder::Interface {}
                pub struct BnChargeClient;
                impl BnChargeClient {
                    pub fn new_binder<T: IChargeClient + Sync + Send + 'static>(
                        _inner: T,
                        _features: binder::BinderFeatures,
                    ) -> binder::Strong<dyn IChargeClient> {
                        unimplemented!("stand-in")
                    }
                }
                impl binder::FromIBinder for dyn IChargeClient {
                    fn try_from(
                        _ibinder: binder::SpIBinder,
                    ) -> std::result::Result<binder::Strong<dyn IChargeClient>, binder::StatusCode> {
                        unimplemented!("stand-in")
                    }
                }
            }
        }
    }
}
