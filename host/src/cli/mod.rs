//! The command line.

mod build;
mod client;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::config::ServeConfig;

/// Shoal: run many small services, each a sandboxed WebAssembly component, on one host.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a host: the gateway, the admin API and every deployed service.
    Serve(ServeConfig),
    /// Build a service to a component (wasm32-wasip2) and print the path of the result.
    Build {
        /// Directory of the service (a Cargo package).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Deploy a component (or a service directory, built first) to a running host.
    Deploy {
        /// A `.wasm` component, or a service directory to build.
        path: PathBuf,
        /// Service name; defaults to the file or package name.
        #[arg(long)]
        name: Option<String>,
        /// Manifest (TOML) with version, route, config and limits.
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the services of a running host.
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a service from a running host.
    Rm {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a host's admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API address.
    #[arg(
        long = "admin",
        env = "SHOAL_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub url: String,
    /// Admin token; defaults to the token file in --data-dir.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of a local host, to read its generated token from.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(config) => crate::server::run(config).await,
        Command::Build { dir } => {
            let wasm = tokio::task::spawn_blocking(move || build::build(&dir)).await??;
            println!("{}", wasm.display());
            Ok(())
        }
        Command::Deploy {
            path,
            name,
            manifest,
            admin,
        } => client::deploy(&admin, &path, name, manifest.as_deref()).await,
        Command::Ls { admin } => client::list(&admin).await,
        Command::Rm { name, admin } => client::remove(&admin, &name).await,
    }
}
