//! Generate the message types of every `.proto` file in `proto/` (needs `protoc`).
fn main() -> std::io::Result<()> {
    let mut protos = Vec::new();
    for entry in std::fs::read_dir("proto")? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            protos.push(path);
        }
    }
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(&protos, &["proto"])
}
