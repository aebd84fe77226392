//! Generate the messages of the payment contract, `../proto/payment.proto` (needs
//! `protoc`).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=../proto/payment.proto");
    prost_build::compile_protos(&["../proto/payment.proto"], &["../proto"])
}
