//! The command line.

mod bench;
mod build;
mod client;
mod dev;
mod people;
mod scaffold;
mod scaffold_grpc;
mod wit_files;

use anyhow::{Context as _, Result};
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
    Serve(Box<ServeConfig>),
    /// Build a service to a component and print the path of the result: the
    /// `[build]` command of its shoal.toml, or by its language (Rust: cargo).
    Build {
        /// Directory of the service.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Write a new service that builds (`shoal build`) and deploys as it stands.
    New {
        /// Service name (lowercase letters, digits and dashes).
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        /// Directory to write (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Shoal SDK a Rust service depends on (default: the SDK of this
        /// checkout).
        #[arg(long, env = "SHOAL_SDK_DIR")]
        sdk: Option<PathBuf>,
        /// A gRPC service (Rust): a `Greeter` of its own, or the services of `--proto`.
        #[arg(long)]
        grpc: bool,
        /// The `.proto` whose services it implements: a function per method.
        #[arg(long, requires = "grpc")]
        proto: Option<PathBuf>,
    },
    /// Develop services: build and deploy each directory (default `.`) on a host of
    /// its own, then rebuild and redeploy a service when its sources change, with
    /// every service's log lines; Ctrl-C stops it all.
    Dev {
        /// Service directories.
        dirs: Vec<PathBuf>,
        /// Use the running host at this admin API instead of starting one.
        #[arg(long = "admin")]
        admin_url: Option<String>,
        /// Its admin token.
        #[arg(
            long,
            env = "SHOAL_ADMIN_TOKEN",
            hide_env_values = true,
            requires = "admin_url"
        )]
        token: Option<String>,
        /// PEM certificates to trust for an `https://` admin API.
        #[arg(long, requires = "admin_url")]
        ca_file: Option<PathBuf>,
        /// That host's gateway, to print each service's URL.
        #[arg(long, requires = "admin_url")]
        gateway: Option<String>,
    },
    /// List a service's recorded requests, or show one (`ID`) as JSON.
    Recordings {
        /// The service.
        name: String,
        /// A recording's id: print it whole.
        id: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replay a recorded request in a sandbox (every import answered from the
    /// recording: nothing is written, called or published) and show the answer
    /// beside the recorded one.
    Replay {
        /// `ID`, or `NAME ID`: the recording (and its service, found from the id
        /// when not given).
        #[arg(num_args = 1..=2, value_names = ["NAME", "ID"], required = true)]
        which: Vec<String>,
        /// Against this version of the service (default: the recorded one, which
        /// must reproduce the recorded outcome).
        #[arg(long, conflicts_with_all = ["component", "live"])]
        to: Option<String>,
        /// Against this component, with the recorded version's manifest.
        #[arg(long, conflicts_with = "live")]
        component: Option<PathBuf>,
        /// Send the recorded request again, for real (GET, HEAD and OPTIONS only:
        /// they change nothing).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set which of a service's requests are recorded, live.
    Record {
        /// The service.
        name: String,
        /// Those that fail (5xx, a fault, a gRPC server-failure status).
        #[arg(long, conflicts_with_all = ["ratio", "off", "manifest"])]
        failed: bool,
        /// That share of all requests, in (0, 1].
        #[arg(long, conflicts_with_all = ["off", "manifest"])]
        ratio: Option<f64>,
        /// None.
        #[arg(long, conflicts_with = "manifest")]
        off: bool,
        /// As its manifest's `[debug] record` says.
        #[arg(long)]
        manifest: bool,
        #[command(flatten)]
        admin: AdminArgs,
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
        /// Deploy as a canary taking this percentage of the traffic (0-100).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        canary: Option<u8>,
        /// With --canary: roll back automatically when the canary's 5xx ratio exceeds this.
        #[arg(long, requires = "canary")]
        max_error_rate: Option<f64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one service: versions, limits, load, faults, usage, canary, recent errors.
    Show {
        /// Service name.
        name: String,
        /// Print the admin API's JSON instead (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Services ordered by CPU, requests or errors, refreshing.
    Top {
        /// What to order by.
        #[arg(long, value_enum, default_value = "cpu")]
        sort: people::TopOrder,
        /// Time between refreshes, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        /// Refreshes before exiting (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        iterations: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// External services (plain HTTP endpoints the registry knows): add, list, remove.
    External {
        #[command(subcommand)]
        action: ExternalAction,
    },
    /// Change a service's concurrency limit and queue, live; in a cluster, also how
    /// many hosts run it.
    Scale {
        /// Service name.
        name: String,
        /// Requests that may run at once (on each host).
        #[arg(long, required_unless_present = "replicas")]
        max_concurrency: Option<u32>,
        /// In a cluster: how many hosts run it.
        #[arg(long)]
        replicas: Option<u32>,
        /// Requests that may wait for a slot (unchanged if omitted).
        #[arg(long)]
        queue: Option<u32>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the hosts of the cluster: state, labels, memory, services placed.
    Hosts {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Drain a host of the cluster before maintenance, or return it to service.
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Switch a service back to its previous version (or --to a given one).
    Rollback {
        /// Service name.
        name: String,
        /// Version to return to.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage a canary: change its weight, promote it or drop it.
    Canary {
        /// Service name.
        name: String,
        /// New percentage of traffic.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with_all = ["promote", "abort"])]
        weight: Option<u8>,
        /// Make the canary the current version.
        #[arg(long, conflicts_with = "abort")]
        promote: bool,
        /// Drop the canary.
        #[arg(long)]
        abort: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the services of a running host.
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Time per-request instantiation of a component (used by the benchmark).
    #[command(hide = true)]
    BenchInstantiate {
        /// The component.
        component: PathBuf,
        /// Instantiations to time.
        #[arg(long, default_value_t = 10_000)]
        iterations: u32,
        /// Allocate on demand instead of from the pool.
        #[arg(long)]
        no_pooling: bool,
        /// Also handle a `GET /` per instance and read the whole response.
        #[arg(long)]
        handle: bool,
        /// Run the baseline compiler's code instead of the optimising compiler's.
        #[arg(long)]
        baseline: bool,
        /// The pooling allocator's keep-resident size (as `serve --keep-resident-kb`).
        #[arg(long, default_value_t = 64)]
        keep_resident_kb: usize,
        /// Reset the whole kept-resident size of each memory and table, instead of
        /// only the pages the kernel says were written (`PAGEMAP_SCAN`).
        #[arg(long)]
        no_pagemap_scan: bool,
    },
    /// Serve a fixed hello world with plain hyper (the benchmark's native ceiling).
    #[command(hide = true)]
    BenchNativeHello {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Events: topics, subscriptions, deliveries waiting and dead letters; replay or
    /// drop a dead letter.
    Events {
        /// What to do with a dead letter (`replay` or `drop`); without it, list.
        #[arg(value_parser = ["replay", "drop"], requires_all = ["subscriber", "event"])]
        action: Option<String>,
        /// The dead letter's subscribing service.
        subscriber: Option<String>,
        /// The dead letter's event id.
        event: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Scoped admin tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// A service's recent log lines (its log import, stdout and stderr).
    Logs {
        /// Service name.
        name: String,
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Only lines of this level and above.
        #[arg(long, value_parser = ["trace", "debug", "info", "warn", "error"])]
        level: Option<String>,
        /// Only lines of this request.
        #[arg(long)]
        request_id: Option<String>,
        /// Kept lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Secrets for services: set, list, remove (values are never shown).
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// The audit log: every change and every refused attempt, oldest first.
    Audit {
        #[command(subcommand)]
        action: Option<AuditAction>,
        /// Entries to show (the most recent).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a service from a running host.
    Rm {
        /// Service name.
        name: String,
        /// Also delete its data (its store), which `rm` otherwise keeps.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A service's data: back it up, restore it, move it between backends.
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
}

/// What to do with a host of the cluster.
#[derive(Debug, Subcommand)]
enum HostAction {
    /// Move every replica off the host (each once its replacement serves); it takes
    /// no new ones.
    Drain {
        /// The host's id (`shoal hosts`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let the host take replicas again.
    Undrain {
        /// The host's id.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What to do with a service's data.
#[derive(Debug, Subcommand)]
enum DataAction {
    /// Write a consistent snapshot of the service's store (keys, values, pending
    /// events, handled events) to standard output, as JSON.
    Export {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Load a snapshot from standard input into the service's store, which must be
    /// empty (on either backend).
    Import {
        /// Service name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What to do with tokens.
#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token; its secret is printed once.
    Create {
        /// A name for it (letters, digits, `-`, `_`, `.`).
        name: String,
        /// What it may do.
        #[arg(long, value_parser = ["read", "deploy", "admin"])]
        scope: String,
        /// With `--scope deploy`: services it may change (glob patterns, repeatable;
        /// default all).
        #[arg(long = "service")]
        services: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List tokens (never their secrets).
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (`tok_…`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What to do with external services.
#[derive(Debug, Subcommand)]
enum ExternalAction {
    /// Register an external service (or replace its endpoints).
    Add {
        /// Its name, as services call it.
        name: String,
        /// An endpoint, `host:port` (repeatable).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Path of its HTTP health check (checked with the defaults).
        #[arg(long)]
        health_path: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List external services.
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an external service.
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What to do with the audit log.
#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check the hash chain of the kept entries (exit status 1 if it is broken).
    Verify {
        /// Check the files in --data-dir instead of asking a running host (which
        /// also checks that the log ends at the last entry it wrote).
        #[arg(long, requires = "data_dir")]
        offline: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What to do with secrets.
#[derive(Debug, Subcommand)]
enum SecretAction {
    /// Set a secret. The value is read from standard input (one trailing newline
    /// dropped) or from `--from-file`, never from the command line.
    Set {
        /// Its name (lower-case letters, digits, `-`).
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Services that may read it (glob patterns, repeatable; default all that
        /// name it).
        #[arg(long = "service")]
        services: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List secrets: name, source and services, never values.
    Ls {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a secret set through the admin API.
    Rm {
        /// Its name.
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
    /// PEM certificates to trust for an `https://` admin API (default: the public
    /// web's roots).
    #[arg(long, env = "SHOAL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Command {
    /// How to reach the admin API, for a command that talks to it.
    fn admin_args(&self) -> Option<&AdminArgs> {
        match self {
            Command::Deploy { admin, .. }
            | Command::Show { admin, .. }
            | Command::Top { admin, .. }
            | Command::Scale { admin, .. }
            | Command::Hosts { admin }
            | Command::Rollback { admin, .. }
            | Command::Canary { admin, .. }
            | Command::Ls { admin }
            | Command::Events { admin, .. }
            | Command::Logs { admin, .. }
            | Command::Recordings { admin, .. }
            | Command::Record { admin, .. }
            | Command::Replay { admin, .. }
            | Command::Audit {
                action: None,
                admin,
                ..
            }
            | Command::Rm { admin, .. } => Some(admin),
            Command::Data { action } => match action {
                DataAction::Export { admin, .. } | DataAction::Import { admin, .. } => Some(admin),
            },
            Command::Audit {
                action: Some(AuditAction::Verify { offline, admin }),
                ..
            } => (!offline).then_some(admin),
            Command::External { action } => match action {
                ExternalAction::Add { admin, .. }
                | ExternalAction::Ls { admin }
                | ExternalAction::Rm { admin, .. } => Some(admin),
            },
            Command::Host { action } => match action {
                HostAction::Drain { admin, .. } | HostAction::Undrain { admin, .. } => Some(admin),
            },
            Command::Token { action } => match action {
                TokenAction::Create { admin, .. }
                | TokenAction::Ls { admin }
                | TokenAction::Revoke { admin, .. } => Some(admin),
            },
            Command::Secret { action } => match action {
                SecretAction::Set { admin, .. }
                | SecretAction::Ls { admin }
                | SecretAction::Rm { admin, .. } => Some(admin),
            },
            _ => None,
        }
    }
}

/// Run the parsed command. A command that talks to the admin API gets its one client
/// here.
pub async fn run(cli: Cli) -> Result<()> {
    let admin = cli
        .command
        .admin_args()
        .map(client::AdminClient::new)
        .transpose()?;
    let admin = || {
        admin
            .as_ref()
            .context("this command does not talk to the admin API")
    };
    match cli.command {
        Command::Serve(config) => crate::server::run(*config).await,
        Command::Build { dir } => {
            let wasm = tokio::task::spawn_blocking(move || build::build(&dir)).await??;
            println!("{}", wasm.display());
            Ok(())
        }
        Command::New {
            name,
            lang,
            dir,
            sdk,
            grpc,
            proto,
        } => {
            if grpc && lang != scaffold::Lang::Rust {
                anyhow::bail!(
                    "--grpc scaffolds a Rust service (the SDK's gRPC server); a {lang:?} \
                     service can serve gRPC through its own toolchain's libraries"
                );
            }
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk
                .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk")));
            if lang == scaffold::Lang::Rust && !sdk.join("Cargo.toml").is_file() {
                anyhow::bail!(
                    "the Shoal SDK is not at {}: pass --sdk (or SHOAL_SDK_DIR) with the \
                     path of the repository's sdk/ folder",
                    sdk.display()
                );
            }
            let sdk = std::fs::canonicalize(&sdk).unwrap_or(sdk);
            if grpc {
                scaffold_grpc::create(&name, &dir, &sdk, proto.as_deref())?;
            } else {
                scaffold::create(lang, &name, &dir, &sdk)?;
            }
            println!(
                "created {} ({lang:?}); build it with `shoal build {}`, deploy it with \
                 `shoal deploy {}`",
                dir.display(),
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Recordings { name, id, .. } => {
            client::recordings(admin()?, &name, id.as_deref()).await
        }
        Command::Replay {
            which,
            to,
            component,
            live,
            ..
        } => {
            let client = admin()?;
            let (name, id) = match which.as_slice() {
                [name, id] => (name.clone(), id.clone()),
                [id] => (client::service_of_recording(client, id).await?, id.clone()),
                _ => anyhow::bail!("give a recording's id, or a service and a recording's id"),
            };
            let target = match (to, component, live) {
                (_, _, true) => client::ReplayTarget::Live,
                (Some(version), _, _) => client::ReplayTarget::Version(version),
                (_, Some(path), _) => client::ReplayTarget::Component(
                    std::fs::read(&path)
                        .with_context(|| format!("reading the component {}", path.display()))?,
                ),
                _ => client::ReplayTarget::Recorded,
            };
            client::replay(client, &name, &id, target).await
        }
        Command::Record {
            name,
            failed,
            ratio,
            off,
            ..
        } => {
            let record = match (failed, ratio, off) {
                (true, _, _) => Some("failed".to_owned()),
                (_, Some(ratio), _) => Some(ratio.to_string()),
                (_, _, true) => Some("off".to_owned()),
                _ => None,
            };
            client::record(admin()?, &name, record).await
        }
        Command::Dev {
            dirs,
            admin_url,
            token,
            ca_file,
            gateway,
        } => {
            let admin = admin_url.map(|url| AdminArgs {
                url,
                token,
                data_dir: None,
                ca_file,
            });
            dev::run(dev::DevOptions {
                dirs,
                admin,
                gateway,
            })
            .await
        }
        Command::Deploy {
            path,
            name,
            manifest,
            canary,
            max_error_rate,
            ..
        } => {
            let canary = canary.map(|weight| client::CanaryOptions {
                weight,
                max_error_rate,
            });
            client::deploy(admin()?, &path, name, manifest.as_deref(), canary).await
        }
        Command::Show { name, json, .. } => client::show(admin()?, &name, json).await,
        Command::Top {
            sort,
            interval_ms,
            iterations,
            ..
        } => {
            let interval = std::time::Duration::from_millis(interval_ms.max(100));
            client::top(admin()?, sort, interval, iterations).await
        }
        Command::External { action } => match action {
            ExternalAction::Add {
                name,
                endpoints,
                health_path,
                ..
            } => client::external_add(admin()?, &name, &endpoints, health_path.as_deref()).await,
            ExternalAction::Ls { .. } => client::external_list(admin()?).await,
            ExternalAction::Rm { name, .. } => client::external_remove(admin()?, &name).await,
        },
        Command::Scale {
            name,
            max_concurrency,
            replicas,
            queue,
            ..
        } => client::scale(admin()?, &name, max_concurrency, replicas, queue).await,
        Command::Hosts { .. } => client::hosts(admin()?).await,
        Command::Host { action } => match action {
            HostAction::Drain { id, .. } => client::drain(admin()?, &id, true).await,
            HostAction::Undrain { id, .. } => client::drain(admin()?, &id, false).await,
        },
        Command::Rollback { name, to, .. } => client::rollback(admin()?, &name, to).await,
        Command::Canary {
            name,
            weight,
            promote,
            abort,
            ..
        } => client::canary(admin()?, &name, weight, promote, abort).await,
        Command::Ls { .. } => client::list(admin()?).await,
        Command::BenchNativeHello { listen } => bench::native_hello(listen).await,
        Command::BenchInstantiate {
            component,
            iterations,
            no_pooling,
            handle,
            baseline,
            keep_resident_kb,
            no_pagemap_scan,
        } => {
            let mode = bench::BenchMode {
                pooling: !no_pooling,
                handle,
                baseline,
                keep_resident_kb,
                no_pagemap_scan,
            };
            // On a worker thread, as the gateway's requests are: a request's guest
            // task then starts on the same worker instead of waking another thread.
            tokio::spawn(async move { bench::instantiate(&component, iterations, mode).await })
                .await
                .map_err(|error| anyhow::anyhow!("the benchmark task failed: {error}"))?
        }
        Command::Rm { name, purge, .. } => {
            client::remove(admin()?, &name).await?;
            if purge {
                client::purge_data(admin()?, &name).await?;
            }
            Ok(())
        }
        Command::Data { action } => match action {
            DataAction::Export { name, .. } => client::export_data(admin()?, &name).await,
            DataAction::Import { name, .. } => client::import_data(admin()?, &name).await,
        },
        Command::Token { action } => match action {
            TokenAction::Create {
                name,
                scope,
                services,
                ..
            } => client::token_create(admin()?, &name, &scope, &services).await,
            TokenAction::Ls { .. } => client::token_list(admin()?).await,
            TokenAction::Revoke { id, .. } => client::token_revoke(admin()?, &id).await,
        },
        Command::Logs {
            name,
            follow,
            level,
            request_id,
            tail,
            ..
        } => {
            let options = client::LogOptions {
                follow,
                level,
                request_id,
                tail,
            };
            client::logs(admin()?, &name, &options).await
        }
        Command::Secret { action } => match action {
            SecretAction::Set {
                name,
                from_file,
                services,
                ..
            } => client::secret_set(admin()?, &name, from_file.as_deref(), &services).await,
            SecretAction::Ls { .. } => client::secret_list(admin()?).await,
            SecretAction::Rm { name, .. } => client::secret_remove(admin()?, &name).await,
        },
        Command::Audit {
            action:
                Some(AuditAction::Verify {
                    offline,
                    admin: args,
                }),
            ..
        } => {
            let verification = match args.data_dir.filter(|_| offline) {
                Some(dir) => {
                    tokio::task::spawn_blocking(move || -> Result<_> {
                        let files = crate::access::audit::files_in(&dir)?;
                        let found = crate::access::audit::verify_files(&files)?;
                        Ok(shoal_api::access::AuditVerification::from(found))
                    })
                    .await??
                }
                None => client::verify_audit(admin()?).await?,
            };
            client::print_verification(&verification)
        }
        Command::Audit { limit, .. } => client::audit(admin()?, limit).await,
        Command::Events {
            action,
            subscriber,
            event,
            ..
        } => match (action.as_deref(), subscriber, event) {
            (Some(action), Some(subscriber), Some(event)) => {
                client::dead_letter(admin()?, action == "replay", &subscriber, &event).await
            }
            _ => client::events(admin()?).await,
        },
    }
}
