//! `shoal`: a WebAssembly host for microservices.
//!
//! `shoal serve` runs the host; `shoal build`, `deploy`, `ls` and `rm` are the user's
//! side of it.

use clap::Parser as _;
use shoal::cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let _log = shoal::telemetry::logs::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
