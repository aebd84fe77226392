//! `shoal new --lang rust --grpc NAME [--proto FILE]`: a Rust gRPC service. Without
//! a `.proto`, a working `Greeter` of its own; with one, a function per method of
//! every service it declares, read from the descriptors `protoc` makes of it (the
//! same compiler the service's build runs), so the scaffold accepts what `protoc`
//! accepts.

use anyhow::{Context as _, Result, bail};
use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Write the gRPC service `name` into `dir`, from `proto` or from the template.
pub fn create(name: &str, dir: &Path, sdk: &Path, proto: Option<&Path>) -> Result<()> {
    super::scaffold::check_new(name, dir)?;
    let package = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{package}}", &package)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            "Cargo.toml".into(),
            fill(include_str!("templates/rust-grpc/Cargo.toml")).into(),
        ),
        (
            "build.rs".into(),
            include_str!("templates/rust-grpc/build.rs").into(),
        ),
    ];
    let services = match proto {
        None => {
            files.push((
                format!("proto/{name}.proto").into(),
                fill(include_str!("templates/rust-grpc/service.proto")).into(),
            ));
            files.push((
                "src/lib.rs".into(),
                fill(include_str!("templates/rust-grpc/lib.rs")).into(),
            ));
            vec![format!("{package}.Greeter")]
        }
        Some(proto) => {
            let file_name = proto
                .file_name()
                .with_context(|| format!("{} is not a file", proto.display()))?;
            let text = std::fs::read(proto)
                .with_context(|| format!("reading the .proto {}", proto.display()))?;
            let descriptor = describe(proto)?;
            let plan = Plan::of(&descriptor)?;
            files.push((Path::new("proto").join(file_name), text));
            files.push((
                "src/lib.rs".into(),
                plan.source(name, &file_name.to_string_lossy()).into(),
            ));
            plan.services
        }
    };
    files.push(("shoal.toml".into(), manifest(name, &services).into()));
    super::scaffold::write_files(dir, files)
}

/// The manifest: the gRPC services the gateway routes to it, unchanged.
fn manifest(name: &str, services: &[String]) -> String {
    let quoted: Vec<String> = services.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "# `{name}`: deploy with `shoal deploy .` (builds first, reads this file).\n\
         version = \"0.1.0\"\n\
         # gRPC services it serves: `/package.Service/Method` reaches it unchanged.\n\
         grpc = [{}]\n\n[config]\ngreeting = \"Hello\"\n",
        quoted.join(", ")
    )
}

/// The descriptor of `proto`, as `protoc` reads it (imports resolved from its folder).
fn describe(proto: &Path) -> Result<FileDescriptorProto> {
    let folder = proto
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let output = Command::new("protoc")
        .arg(format!("-I{}", folder.display()))
        .arg("--descriptor_set_out=/dev/stdout")
        .arg(proto)
        .output()
        .context("running protoc (Debian: apt install protobuf-compiler)")?;
    if !output.status.success() {
        bail!(
            "protoc cannot read {}:\n{}",
            proto.display(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let set =
        FileDescriptorSet::decode(output.stdout.as_slice()).context("protoc's descriptors")?;
    set.file
        .into_iter()
        .next()
        .with_context(|| format!("protoc described nothing in {}", proto.display()))
}

/// What the generated `lib.rs` holds: one function per method.
#[derive(Debug, PartialEq)]
struct Plan {
    /// The proto package (`helloworld`), empty for none.
    package: String,
    /// `package.Service` of every service.
    services: Vec<String>,
    methods: Vec<Method>,
}

#[derive(Debug, PartialEq)]
struct Method {
    /// `/package.Service/Method`.
    path: String,
    /// The Rust function.
    function: String,
    request: String,
    reply: String,
    streaming: bool,
}

impl Plan {
    fn of(file: &FileDescriptorProto) -> Result<Plan> {
        let package = file.package().to_owned();
        if file.service.is_empty() {
            bail!(
                "{} declares no service: a gRPC service needs at least one",
                file.name()
            );
        }
        let prefix_fns = file.service.len() > 1;
        let mut plan = Plan {
            package: package.clone(),
            services: Vec::new(),
            methods: Vec::new(),
        };
        for service in &file.service {
            let full = if package.is_empty() {
                service.name().to_owned()
            } else {
                format!("{package}.{}", service.name())
            };
            for method in &service.method {
                if method.client_streaming() {
                    bail!(
                        "{full}/{} streams requests: the SDK serves unary and \
                         server-streaming methods",
                        method.name()
                    );
                }
                let mut function = snake_case(method.name());
                if prefix_fns {
                    function = format!("{}_{function}", snake_case(service.name()));
                }
                if RUST_KEYWORDS.contains(&function.as_str()) {
                    function.push_str("_method");
                }
                plan.methods.push(Method {
                    path: format!("/{full}/{}", method.name()),
                    function,
                    request: rust_type(&package, method.input_type())?,
                    reply: rust_type(&package, method.output_type())?,
                    streaming: method.server_streaming(),
                });
            }
            plan.services.push(full);
        }
        Ok(plan)
    }

    /// The service's `src/lib.rs`.
    fn source(&self, name: &str, proto: &str) -> String {
        let generated = if self.package.is_empty() {
            "_"
        } else {
            &self.package
        };
        let mut text = format!(
            "//! `{name}`: the gRPC services of `proto/{proto}`. Each method is a function\n\
             //! below; the SDK frames the messages and sends the status. Until a method\n\
             //! is written it answers an empty reply.\n\n\
             use shoal_sdk::grpc::{{Context, Server, ServerStream, Status}};\n\n\
             #[allow(dead_code, clippy::all)]\n\
             mod proto {{\n    include!(concat!(env!(\"OUT_DIR\"), \"/{generated}.rs\"));\n}}\n"
        );
        if !self.methods.iter().any(|method| method.streaming) {
            text = text.replace(
                "Context, Server, ServerStream, Status",
                "Context, Server, Status",
            );
        }
        for method in &self.methods {
            let (function, request, reply) = (&method.function, &method.request, &method.reply);
            text.push_str(&format!("\n/// `{}`.\n", method.path));
            if method.streaming {
                text.push_str(&format!(
                    "fn {function}(\n    _: &Context,\n    request: {request},\n    \
                     replies: &mut ServerStream<'_, {reply}>,\n) -> Result<(), Status> {{\n    \
                     let _ = request;\n    replies.send(&{reply}::default())?;\n    Ok(())\n}}\n"
                ));
            } else {
                text.push_str(&format!(
                    "fn {function}(_: &Context, request: {request}) -> Result<{reply}, Status> {{\n    \
                     let _ = request;\n    Ok({reply}::default())\n}}\n"
                ));
            }
        }
        text.push_str("\nfn server() -> Server {\n    Server::new()");
        for method in &self.methods {
            let kind = if method.streaming {
                "server_streaming"
            } else {
                "unary"
            };
            text.push_str(&format!(
                "\n        .{kind}(\"{}\", {})",
                method.path, method.function
            ));
        }
        text.push_str("\n}\n\nshoal_sdk::grpc_service!(server);\n");
        text
    }
}

/// The Rust path prost generates for the message `.package.Outer.Inner` of
/// `package`: `proto::outer::Inner`. Messages of other packages (imports) are
/// refused by name.
fn rust_type(package: &str, full: &str) -> Result<String> {
    let prefix = if package.is_empty() {
        ".".to_owned()
    } else {
        format!(".{package}.")
    };
    let Some(local) = full.strip_prefix(&prefix) else {
        bail!(
            "message {} is not of package `{package}`: the scaffold writes methods whose \
             messages the .proto itself declares",
            full.trim_start_matches('.')
        );
    };
    let mut parts: Vec<String> = local.split('.').map(str::to_owned).collect();
    let last = parts.pop().unwrap_or_default();
    let mut path = vec!["proto".to_owned()];
    path.extend(parts.iter().map(|outer| snake_case(outer)));
    path.push(last);
    Ok(path.join("::"))
}

/// `SayHelloStream` → `say_hello_stream`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if previous_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            previous_lower = false;
        } else {
            out.push(c);
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while",
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{MethodDescriptorProto, ServiceDescriptorProto};

    fn method(
        name: &str,
        input: &str,
        output: &str,
        streams: (bool, bool),
    ) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.to_owned()),
            input_type: Some(input.to_owned()),
            output_type: Some(output.to_owned()),
            client_streaming: Some(streams.0),
            server_streaming: Some(streams.1),
            ..Default::default()
        }
    }

    fn file(
        package: &str,
        services: Vec<(&str, Vec<MethodDescriptorProto>)>,
    ) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some("x.proto".to_owned()),
            package: Some(package.to_owned()),
            service: services
                .into_iter()
                .map(|(name, method)| ServiceDescriptorProto {
                    name: Some(name.to_owned()),
                    method,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_method_becomes_a_function_on_its_path() {
        let plan = Plan::of(&file(
            "shop.v1",
            vec![(
                "Payment",
                vec![
                    method(
                        "Charge",
                        ".shop.v1.ChargeRequest",
                        ".shop.v1.Receipt",
                        (false, false),
                    ),
                    method(
                        "Watch",
                        ".shop.v1.Order.Id",
                        ".shop.v1.Event",
                        (false, true),
                    ),
                ],
            )],
        ))
        .expect("plan");
        assert_eq!(plan.services, ["shop.v1.Payment"]);
        assert_eq!(plan.methods[0].path, "/shop.v1.Payment/Charge");
        assert_eq!(plan.methods[0].function, "charge");
        assert_eq!(plan.methods[0].request, "proto::ChargeRequest");
        assert_eq!(plan.methods[1].request, "proto::order::Id");
        assert!(plan.methods[1].streaming);
        let source = plan.source("payment", "x.proto");
        assert!(source.contains("/shop.v1.rs"), "{source}");
        assert!(
            source.contains(".server_streaming(\"/shop.v1.Payment/Watch\", watch)"),
            "{source}"
        );
    }

    #[test]
    fn what_the_sdk_cannot_serve_is_refused_by_name() {
        let streaming = file(
            "p",
            vec![("S", vec![method("Upload", ".p.A", ".p.B", (true, false))])],
        );
        let error = Plan::of(&streaming)
            .expect_err("client streaming")
            .to_string();
        assert!(error.contains("p.S/Upload streams requests"), "{error}");
        let foreign = file(
            "p",
            vec![(
                "S",
                vec![method(
                    "Ping",
                    ".google.protobuf.Empty",
                    ".p.B",
                    (false, false),
                )],
            )],
        );
        let error = Plan::of(&foreign).expect_err("foreign type").to_string();
        assert!(error.contains("google.protobuf.Empty"), "{error}");
        assert!(Plan::of(&file("p", vec![])).is_err());
    }

    #[test]
    fn names_become_rust_names() {
        assert_eq!(snake_case("SayHelloStream"), "say_hello_stream");
        assert_eq!(snake_case("GetV2Item"), "get_v2_item");
        let plan = Plan::of(&file(
            "",
            vec![
                ("A", vec![method("Type", ".M", ".M", (false, false))]),
                ("B", vec![method("Type", ".M", ".M", (false, false))]),
            ],
        ))
        .expect("plan");
        assert_eq!(plan.methods[0].function, "a_type");
        assert_eq!(plan.methods[1].function, "b_type");
        assert_eq!(plan.services, ["A", "B"]);
        assert!(plan.source("x", "x.proto").contains("/_.rs"));
    }
}
