//! Export a health check the host calls on an interval (see the manifest's `[health]`).
//!
//! ```no_run
//! use shoal_sdk::registry::Health;
//!
//! fn check() -> Health {
//!     // Ready only when the database service is discoverable.
//!     match shoal_sdk::discovery::discover("db") {
//!         Ok(instances) if !instances.is_empty() => Health::Serving,
//!         _ => Health::NotServing,
//!     }
//! }
//!
//! shoal_sdk::health_check!(check);
//! ```
//!
//! Each check runs in a fresh instance with a short deadline; a check that traps or
//! overruns counts as not serving.

/// Bindings of the `health-check` export, sharing types with [`crate::bindings`].
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        inline: "
            package shoal:sdk-health;
            world health {
                export shoal:platform/health-check@0.1.0;
            }
        ",
        path: "../wit",
        world: "shoal:sdk-health/health",
        with: {
            "shoal:platform/registry@0.1.0": crate::bindings::shoal::platform::registry,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "shoal_sdk::health::bindings",
        runtime_path: "shoal_sdk::__private::wit_bindgen::rt",
        type_section_suffix: "shoal-health",
    });
}

/// Export `check` (a `fn() -> registry::Health`) as the service's health check.
#[macro_export]
macro_rules! health_check {
    ($check:path) => {
        #[doc(hidden)]
        struct __ShoalHealthCheck;

        impl $crate::health::bindings::exports::shoal::platform::health_check::Guest
            for __ShoalHealthCheck
        {
            fn check() -> $crate::registry::Health {
                $check()
            }
        }

        $crate::health::bindings::export!(__ShoalHealthCheck with_types_in $crate::health::bindings);
    };
}
