//! `shoal dev [DIR…]`: the developer's loop. It starts a host of its own (or uses a
//! running one, `--admin URL`), builds and deploys every service directory, prints
//! where each one answers, then watches their sources: a change rebuilds and
//! redeploys only that service (the host swaps it without dropping a request), a
//! build that fails is shown and the last good version keeps serving. Every service's
//! log lines are printed as they come, each service in a colour of its own. Ctrl-C
//! (or SIGTERM) stops what it started: the host it ran, and its temporary data.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AdminArgs;
use super::client::{self, AdminClient, LogOptions};

/// How long a burst of file changes may go on before the rebuild starts.
const SETTLE: Duration = Duration::from_millis(300);
/// Path components whose files are build products or tools' state, never sources.
const IGNORED: &[&str] = &[
    "target",
    "node_modules",
    ".git",
    "__pycache__",
    "wit_world",
    "build",
    "dist",
];
/// How long a host of its own may take to listen.
const HOST_START: Duration = Duration::from_secs(60);

/// What `shoal dev` was asked to do.
pub struct DevOptions {
    /// Service directories (each with its `shoal.toml`, or one `shoal build` knows).
    pub dirs: Vec<PathBuf>,
    /// A running host's admin API; without it, a host of its own is started.
    pub admin: Option<AdminArgs>,
    /// That host's gateway, to print the services' URLs.
    pub gateway: Option<String>,
}

/// One service under development.
struct DevService {
    name: String,
    dir: PathBuf,
    colour: &'static str,
    /// Its build output, ignored by the watcher.
    output: Option<PathBuf>,
}

/// Run the loop until Ctrl-C.
pub async fn run(options: DevOptions) -> Result<()> {
    let stop = stop_signal()?;
    let services = plan(&options.dirs)?;
    let printer = Printer::new();
    let (host, client, gateway) = match &options.admin {
        Some(args) => (None, AdminClient::new(args)?, options.gateway.clone()),
        None => {
            let host = EmbeddedHost::start()
                .await
                .context("starting a host for `shoal dev`")?;
            printer.note(&format!(
                "host started (pid {}, data in {}, admin API {}, gateway {})",
                host.pid(),
                host.root.path().display(),
                host.admin,
                host.gateway
            ));
            let client = AdminClient::new(&AdminArgs {
                url: host.admin.clone(),
                token: Some(host.token.clone()),
                data_dir: None,
                ca_file: None,
            })?;
            let gateway = Some(host.gateway.clone());
            (Some(host), client, gateway)
        }
    };
    let client = Arc::new(client);
    let printer = Arc::new(printer);
    tokio::pin!(stop);
    // Whatever happens from here (Ctrl-C during the first builds, a watcher that
    // cannot start), the host this started is stopped and its data removed.
    let developed = tokio::select! {
        _ = &mut stop => Ok(()),
        result = develop(&services, &client, gateway.as_deref(), &printer) => result,
    };
    printer.note("stopping");
    if let Some(host) = host {
        host.stop().await;
        printer.note("host stopped, its data removed");
    } else {
        printer.note("the services stay deployed on the host at --admin");
    }
    developed
}

/// Build and deploy every service, then rebuild and redeploy each one whose sources
/// change, until the watcher stops.
async fn develop(
    services: &[DevService],
    client: &Arc<AdminClient>,
    gateway: Option<&str>,
    printer: &Arc<Printer>,
) -> Result<()> {
    let mut followed = BTreeSet::new();
    for service in services {
        if build_and_deploy(client, service, gateway, printer).await {
            follow_logs(client, service, printer, &mut followed);
        }
    }
    printer.note("watching for changes; Ctrl-C stops");
    let (changes, mut changed) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let _watcher = watch(services, changes)?;
    let mut contents = Contents::default();
    loop {
        let Some(first) = changed.recv().await else {
            bail!("the file watcher stopped");
        };
        // Let the burst settle (an editor's save is several events), then rebuild each
        // service whose sources changed, once.
        let mut paths = vec![first];
        let settled = tokio::time::sleep(SETTLE);
        tokio::pin!(settled);
        loop {
            tokio::select! {
                _ = &mut settled => break,
                path = changed.recv() => match path {
                    Some(path) => paths.push(path),
                    None => break,
                },
            }
        }
        // A file written again with the same bytes (a build regenerating its own
        // sources, a lock file rewritten) is not a change.
        paths.retain(|path| contents.changed(path));
        for service in services {
            if paths.iter().any(|path| is_source_of(service, path))
                && build_and_deploy(client, service, gateway, printer).await
            {
                follow_logs(client, service, printer, &mut followed);
            }
        }
    }
}

/// The last bytes seen of each changed file, as a hash.
#[derive(Default)]
struct Contents {
    seen: std::collections::HashMap<PathBuf, u64>,
}

impl Contents {
    /// Whether `path` holds other bytes than when it was last seen (a file seen for
    /// the first time, or gone, has changed).
    fn changed(&mut self, path: &Path) -> bool {
        use std::hash::{Hash as _, Hasher as _};
        let Ok(bytes) = std::fs::read(path) else {
            return self.seen.remove(path).is_some() || !path.exists();
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        let hash = hasher.finish();
        self.seen.insert(path.to_path_buf(), hash) != Some(hash)
    }
}

/// The services of `dirs`: names from their directories, build outputs from their
/// manifests. Refused when a directory is missing or two share a name.
fn plan(dirs: &[PathBuf]) -> Result<Vec<DevService>> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        dirs.to_vec()
    };
    let mut services: Vec<DevService> = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        if !dir.is_dir() {
            bail!("{} is not a service directory", dir.display());
        }
        let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
        let name = super::build::name_from_path(&dir)?;
        if services.iter().any(|service| service.name == name) {
            bail!("two directories would both deploy `{name}`");
        }
        let output = std::fs::read_to_string(dir.join("shoal.toml"))
            .ok()
            .and_then(|text| crate::manifest::Manifest::from_toml(&text).ok())
            .and_then(|manifest| manifest.build)
            .map(|build| dir.join(build.output));
        services.push(DevService {
            name,
            dir,
            colour: COLOURS[index % COLOURS.len()],
            output,
        });
    }
    Ok(services)
}

/// Whether a change to `path` is a change to `service`'s sources.
fn is_source_of(service: &DevService, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(&service.dir) else {
        return false;
    };
    if service.output.as_deref() == Some(path) {
        return false;
    }
    let ignored = relative.components().any(|component| {
        let part = component.as_os_str().to_string_lossy();
        IGNORED.contains(&part.as_ref()) || part.starts_with('.')
    });
    let generated = path
        .extension()
        .is_some_and(|extension| extension == "wasm" || extension == "pyc");
    !ignored && !generated
}

/// Build `service` and deploy it; whether it now runs the new build. A failure is
/// printed, and the version deployed before keeps serving.
async fn build_and_deploy(
    client: &AdminClient,
    service: &DevService,
    gateway: Option<&str>,
    printer: &Printer,
) -> bool {
    printer.progress(service, "building…");
    let started = Instant::now();
    let dir = service.dir.clone();
    // The build's own output (compiler errors included) goes to the terminal.
    let built = tokio::task::spawn_blocking(move || super::build::build(&dir)).await;
    let wasm = match built {
        Ok(Ok(wasm)) => wasm,
        Ok(Err(error)) => {
            printer.failure(service, &format!("build failed: {error:#}"));
            return false;
        }
        Err(error) => {
            printer.failure(service, &format!("the build stopped: {error}"));
            return false;
        }
    };
    let build_time = started.elapsed();
    let deployed = async {
        let component = tokio::fs::read(&wasm)
            .await
            .with_context(|| format!("reading {}", wasm.display()))?;
        let manifest = match tokio::fs::read_to_string(service.dir.join("shoal.toml")).await {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).context("reading shoal.toml"),
        };
        client::deploy_quietly(client, &service.name, &component, manifest.as_deref()).await
    }
    .await;
    match deployed {
        Ok(answer) => {
            let Some(running) = answer.running() else {
                printer.failure(service, "deployed, but it does not run");
                return false;
            };
            let at = match gateway {
                Some(gateway) => format!("{}{}", gateway.trim_end_matches('/'), running.route),
                None => format!("route {}", running.route),
            };
            printer.success(
                service,
                &format!(
                    "deployed {} in {:.1} s (build {:.1} s) → {at}",
                    running.version,
                    started.elapsed().as_secs_f64(),
                    build_time.as_secs_f64()
                ),
            );
            true
        }
        Err(error) => {
            printer.failure(service, &format!("deploy failed: {error:#}"));
            false
        }
    }
}

/// Print `service`'s log lines as they come, once per service.
fn follow_logs(
    client: &Arc<AdminClient>,
    service: &DevService,
    printer: &Arc<Printer>,
    followed: &mut BTreeSet<String>,
) {
    if !followed.insert(service.name.clone()) {
        return;
    }
    let client = client.clone();
    let printer = printer.clone();
    let name = service.name.clone();
    let colour = service.colour;
    tokio::spawn(async move {
        let options = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let result = client::read_logs(&client, &name, &options, &mut |line| {
            printer.log_line(&name, colour, line);
        })
        .await;
        if let Err(error) = result {
            printer.note(&format!("{name}: its log stopped: {error:#}"));
        }
    });
}

/// Send every changed path under the services' directories to `changes`.
fn watch(
    services: &[DevService],
    changes: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for path in event.paths {
                let _ = changes.send(path);
            }
        }
    })
    .context("starting the file watcher")?;
    for service in services {
        watcher
            .watch(&service.dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", service.dir.display()))?;
    }
    Ok(watcher)
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called,
/// not when it is first awaited, so a Ctrl-C during the first builds is caught too.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("handling Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// A host `shoal dev` runs for itself: this binary's `serve`, on free local ports,
/// with a temporary data directory and a fresh admin token. Stopped, and its data
/// removed, by [`EmbeddedHost::stop`]; the kernel ends it if `shoal dev` dies first.
struct EmbeddedHost {
    child: tokio::process::Child,
    root: tempfile::TempDir,
    admin: String,
    gateway: String,
    token: String,
}

impl EmbeddedHost {
    async fn start() -> Result<EmbeddedHost> {
        use tokio::io::AsyncBufReadExt as _;
        let root = tempfile::Builder::new()
            .prefix("shoal-dev-")
            .tempdir()
            .context("a temporary data directory")?;
        let token = format!("{:032x}", rand::random::<u128>());
        let log = std::fs::File::create(root.path().join("host.log")).context("the host's log")?;
        let mut command = tokio::process::Command::new(
            std::env::current_exe().context("finding this program to run the host")?,
        );
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("SHOAL_ADMIN_TOKEN", &token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        end_with_parent(&mut command);
        command.kill_on_drop(true);
        let mut child = command.spawn().context("starting `shoal serve`")?;
        let stdout = child.stdout.take().context("the host's output")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut admin, mut gateway) = (None, None);
        let listening = async {
            while admin.is_none() || gateway.is_none() {
                let Some(line) = lines.next_line().await? else {
                    let log =
                        std::fs::read_to_string(root.path().join("host.log")).unwrap_or_default();
                    bail!("the host stopped before it listened:\n{log}");
                };
                if let Some(url) = line.strip_prefix("admin API listening on ") {
                    admin = Some(url.trim().to_owned());
                } else if let Some(url) = line.strip_prefix("gateway listening on ") {
                    gateway = Some(url.trim().to_owned());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(HOST_START, listening).await {
            Ok(result) => result?,
            Err(_) => bail!("the host did not listen within {} s", HOST_START.as_secs()),
        }
        // Keep reading, so the host never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(EmbeddedHost {
            child,
            root,
            admin: admin.unwrap_or_default(),
            gateway: gateway.unwrap_or_default(),
            token,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Stop the host (SIGTERM, then SIGKILL after ten seconds) and remove its data.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            terminate(pid);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = self.root.close();
    }
}

/// Have the kernel send the child SIGTERM when this process ends, however it ends,
/// so no host outlives an unlucky `shoal dev`.
#[allow(unsafe_code)]
fn end_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Ask the child `pid` to stop (SIGTERM: the host drains and exits).
#[allow(unsafe_code)]
fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes plain integers; `pid` is a child this process started and
    // has not reaped, so the number cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// ANSI colours given to services in turn.
const COLOURS: &[&str] = &["36", "35", "33", "32", "34", "31"];

/// Writes `shoal dev`'s lines: progress, outcomes and the services' logs, coloured
/// when stdout is a terminal (and `NO_COLOR` is not set).
struct Printer {
    colour: bool,
}

impl Printer {
    fn new() -> Self {
        Self {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn emit(&self, line: String) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn note(&self, text: &str) {
        self.emit(format!("{} {text}", self.paint("1", "shoal dev:")));
    }

    fn progress(&self, service: &DevService, text: &str) {
        self.emit(format!(
            "{} {text}",
            self.paint(service.colour, &service.name)
        ));
    }

    fn success(&self, service: &DevService, text: &str) {
        self.emit(format!(
            "{} {} {text}",
            self.paint(service.colour, &service.name),
            self.paint("32", "✓")
        ));
    }

    fn failure(&self, service: &DevService, text: &str) {
        self.emit(format!(
            "{} {} {text} (the version deployed before keeps serving)",
            self.paint(service.colour, &service.name),
            self.paint("31", "✗")
        ));
    }

    fn log_line(&self, name: &str, colour: &str, line: &shoal_api::logs::LogLine) {
        let level = line.level.to_uppercase();
        let level = match line.level.as_str() {
            "error" => self.paint("31", &level),
            "warn" => self.paint("33", &level),
            _ => level,
        };
        let fields = if line.fields.is_empty() {
            String::new()
        } else {
            format!(" {}", line.fields)
        };
        self.emit(format!(
            "{} {level:<5} {} {}{fields}",
            self.paint(colour, &format!("{name} |")),
            line.request_id,
            line.message
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dir: &str, output: Option<&str>) -> DevService {
        DevService {
            name: "svc".to_owned(),
            dir: PathBuf::from(dir),
            colour: COLOURS[0],
            output: output.map(PathBuf::from),
        }
    }

    #[test]
    fn sources_are_what_a_build_reads_not_what_it_writes() {
        let rust = service("/w/svc", None);
        assert!(is_source_of(&rust, Path::new("/w/svc/src/lib.rs")));
        assert!(is_source_of(&rust, Path::new("/w/svc/shoal.toml")));
        assert!(!is_source_of(
            &rust,
            Path::new("/w/svc/target/release/x.rlib")
        ));
        assert!(!is_source_of(&rust, Path::new("/w/svc/.git/index")));
        assert!(!is_source_of(&rust, Path::new("/w/svc/src/.lib.rs.swp")));
        assert!(!is_source_of(&rust, Path::new("/w/other/src/lib.rs")));
        let js = service("/w/js", Some("/w/js/js.wasm"));
        assert!(is_source_of(&js, Path::new("/w/js/app.js")));
        assert!(!is_source_of(&js, Path::new("/w/js/js.wasm")));
        assert!(!is_source_of(
            &js,
            Path::new("/w/js/node_modules/a/index.js")
        ));
    }

    #[test]
    fn a_file_written_again_with_the_same_bytes_is_no_change() {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("build/service.c");
        std::fs::create_dir_all(file.parent().expect("dir")).expect("dir");
        let mut contents = Contents::default();
        std::fs::write(&file, "int x;").expect("write");
        assert!(contents.changed(&file), "first seen");
        std::fs::write(&file, "int x;").expect("write");
        assert!(!contents.changed(&file), "same bytes");
        std::fs::write(&file, "int y;").expect("write");
        assert!(contents.changed(&file), "new bytes");
        std::fs::remove_file(&file).expect("remove");
        assert!(contents.changed(&file), "gone");
        let c = service("/w/c", None);
        assert!(!is_source_of(&c, Path::new("/w/c/build/service.o")));
    }

    #[test]
    fn directories_must_exist_and_name_distinct_services() {
        let root = tempfile::tempdir().expect("temp dir");
        let missing = root.path().join("nothing");
        let error = plan(std::slice::from_ref(&missing)).err().expect("refused");
        assert!(
            error.to_string().contains("not a service directory"),
            "{error}"
        );
        let a = root.path().join("a/orders");
        let b = root.path().join("b/orders");
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        let error = plan(&[a.clone(), b]).err().expect("refused");
        assert!(
            error.to_string().contains("both deploy `orders`"),
            "{error}"
        );
        let planned = plan(&[a]).expect("plan");
        assert_eq!(planned[0].name, "orders");
    }
}
