//! Write [Shoal](https://github.com/) services in Rust.
//!
//! A service is a WebAssembly component that answers HTTP requests. With this crate a
//! service is a plain function:
//!
//! ```no_run
//! use shoal_sdk::http::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     let greeting = shoal_sdk::config::get("greeting").unwrap_or_else(|| "hello".into());
//!     shoal_sdk::log::info("greeting", &[("path", req.path())]);
//!     Response::text(200, format!("{greeting} from {}\n", req.path()))
//! }
//!
//! shoal_sdk::http_service!(handle);
//! ```
//!
//! Build it with `shoal build` (or `cargo build --release --target wasm32-wasip2`) and
//! deploy it with `shoal deploy`.
//!
//! The raw bindings of the `shoal:platform/service` world, including every `wasi:*`
//! interface, are in [`bindings`] for services that need streaming bodies or other
//! low-level control.
#![deny(missing_docs)]

extern crate self as shoal_sdk;

pub mod caller;
pub mod config;
pub mod discovery;
pub mod events;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
pub mod http;
pub mod log;
pub mod metrics;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod trace;

/// Generated bindings of the `shoal:platform/service` world.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "shoal:platform/service",
        path: "../wit",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "shoal_sdk::bindings",
        runtime_path: "shoal_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// Export `handler` (a `fn(http::Request) -> http::Response`) as the service's
/// `wasi:http/incoming-handler`.
///
/// The request body is read completely before the handler runs, and the response is
/// written out after it returns; services that stream can implement the
/// `incoming-handler` export from [`bindings`] directly instead.
#[macro_export]
macro_rules! http_service {
    ($handler:path) => {
        #[doc(hidden)]
        struct __ShoalHttpService;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __ShoalHttpService {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::serve(request, response_out, $handler)
            }
        }

        $crate::bindings::export!(__ShoalHttpService with_types_in $crate::bindings);
    };
}
