//! Generate the message types of `proto/helloworld.proto` (needs `protoc`).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/helloworld.proto");
    prost_build::compile_protos(&["proto/helloworld.proto"], &["proto"])
}
